use clap::{CommandFactory, FromArgMatches};

use compute_worker::cli::{Cli, Cmd, LogFormat};
use compute_worker::commands;
use compute_worker::config::{self, Early};
use compute_worker::sandbox::phases;
use tracing_subscriber::prelude::*;

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
    // The fork server that clones launchers for serve and run: likewise.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == compute_worker::sandbox::fork_server::SERVER_ARG)
    {
        init_logging(LogFormat::Human, helper::LOG_VAR, helper::LOG_DEFAULT);
        compute_worker::sandbox::fork_server::main();
    }
    // The supervisor of one run's pasta: single-threaded too.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == compute_worker::sandbox::pasta::SUPERVISOR_ARG)
    {
        compute_worker::sandbox::pasta::supervisor_main();
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
        Cmd::Exec(args) => commands::exec::run(*args),
        Cmd::Serve(args) => commands::serve::run(*args),
        Cmd::Run(args) => commands::run::run(*args),
        Cmd::Pull(args) => commands::pull::run(args),
        Cmd::Images(args) => commands::images::run(args),
        Cmd::Prune(args) => commands::prune::run(args),
        Cmd::Import(args) => commands::import::run(args),
        Cmd::Config(args) => {
            let sub = matches.subcommand_matches("config").unwrap_or(&matches);
            commands::config::run(&command, &layers, sub, &args)
        }
        Cmd::Doctor(args) => commands::doctor::run(*args),
        Cmd::SetupHost(args) => commands::setup_host::run(*args),
        Cmd::InstallService(args) => commands::install_service::run(args, cli.env_file),
        Cmd::Hitl(args) => commands::hitl::run(args),
        Cmd::Bench(args) => commands::bench::run(args),
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // The sandbox's phases (trace level: never in the log unless asked
    // for) go to their recorder whatever the log's filter says.
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(phases::Recorder.with_filter(phases::filter()))
        .init();
}
