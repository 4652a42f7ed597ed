use clap::Parser;

use compute_worker::cli::{Cli, Cmd, LogFormat};

fn main() {
    // The sandbox helper must start before anything else: it forks, so it
    // must stay single-threaded.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__sandbox") {
        // Its own variable: libcontainer logs from the container's init
        // process land in the program's stderr, which participants read.
        init_logging(
            LogFormat::Human,
            "COMPUTE_WORKER_SANDBOX_LOG",
            "error,libcontainer=off,libcgroups=off",
        );
        compute_worker::sandbox::helper::main();
    }
    // A .env file (Codabench's names) fills what the environment lacks;
    // it must be read before clap looks at `env = ...` defaults.
    let env_file = env_file_arg();
    match &env_file {
        Some(path) => {
            if let Err(e) = dotenvy::from_path(path) {
                eprintln!("compute-worker: cannot read {}: {e}", path.display());
                std::process::exit(2);
            }
        }
        None => {
            let _ = dotenvy::dotenv();
        }
    }
    let cli = Cli::parse();
    init_logging(
        cli.log_format,
        "COMPUTE_WORKER_LOG",
        "info,libcontainer=warn,libcgroups=warn",
    );
    let code = match cli.command {
        Cmd::Exec(args) => compute_worker::exec::run(*args),
        Cmd::Serve(args) => compute_worker::serve::run(*args),
        Cmd::Run(args) => compute_worker::run::run(*args),
        Cmd::Pull(args) => compute_worker::images::pull(args),
        Cmd::Images(args) => compute_worker::images::list(args),
        Cmd::Prune(args) => compute_worker::images::prune(args),
        Cmd::Import(args) => compute_worker::images::import(args),
        Cmd::Doctor(args) => compute_worker::ops::doctor::run(*args),
        Cmd::SetupHost(args) => compute_worker::ops::setup_host::run(*args),
        Cmd::InstallService(args) => compute_worker::ops::service::run(args, cli.env_file),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("compute-worker: {e:#}");
            std::process::exit(1)
        }
    }
}

/// `--env-file PATH` / `--env-file=PATH`, looked up before clap runs.
fn env_file_arg() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        if a == "--env-file" {
            return args.next().map(Into::into);
        }
        if let Some(p) = a.strip_prefix("--env-file=") {
            return Some(p.into());
        }
        if a == "--" {
            break;
        }
    }
    None
}

fn init_logging(format: LogFormat, var: &str, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
