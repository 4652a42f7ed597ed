use clap::{CommandFactory, FromArgMatches};

use compute_worker::cli::{Cli, Cmd, LogFormat};
use compute_worker::config::{self, Early};

fn main() {
    // The sandbox launcher must start before anything else: it clones, so
    // it must stay single-threaded.
    use compute_worker::sandbox::helper;
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == helper::LAUNCHER_ARG)
    {
        init_logging(LogFormat::Human, helper::LOG_VAR, helper::LOG_DEFAULT);
        helper::main();
    }
    // The layers below the command line (config file, .env) go into the
    // environment before clap reads it, while this process has one thread.
    let early = Early::from_args(std::env::args_os());
    let command = Cli::command();
    let layers = match config::load(&command, &early) {
        Ok(layers) => layers,
        Err(e) => {
            eprintln!("compute-worker: {e:#}");
            std::process::exit(2);
        }
    };
    // Declared again when `load` set variables: clap reads each option's
    // variable when the option is declared.
    let mut command = if layers.set_variables() {
        Cli::command()
    } else {
        command
    };
    let matches = command.get_matches_mut();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
        Cmd::Config(args) => {
            let sub = matches.subcommand_matches("config").unwrap_or(&matches);
            Ok(config::show(&command, &layers, sub, args.json))
        }
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
