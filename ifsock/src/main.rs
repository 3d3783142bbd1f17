//! ifsock command-line entry point: parse, set up logging and the netns, run one view.
use std::process::ExitCode;

use clap::Parser;
use ifsock::{
    cli::{Cli, Command},
    kernel::{netns::NetnsHandle, signals::Interrupted},
    render, views,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`ifsock sockets | head -1`): stop quietly with the
        // shell's SIGPIPE status.
        Err(e) if e.downcast_ref::<render::StdoutClosed>().is_some() => ExitCode::from(141),
        // The command already said what state it left; exit like the signal would.
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            ExitCode::from(e.downcast_ref::<Interrupted>().map_or(130, |i| i.0.exit_code()))
        }
        Err(e) => {
            eprintln!("ifsock: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // `journal` reads history: its --netns filters records of namespaces that may be gone.
    if let Command::Journal(a) = cli.command {
        return views::journal::run(a, cli.netns);
    }
    cli.check()?;
    // Enter the netns while single-threaded: every thread the runtime starts inherits it.
    if let Some(spec) = &cli.netns {
        NetnsHandle::resolve(spec)?.enter()?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Sockets(a) => views::sockets::run(a).await,
            Command::Watch(a) => views::watch::run(a).await,
            Command::Doctor(a) => views::doctor::run(a).await,
            Command::Hung(a) => views::hung::run(a).await,
            Command::Teardown(a) => views::teardown::run(a).await,
            Command::Tun(a) => views::tun::run(a).await,
            Command::Abort(a) => views::abort::run(a).await,
            Command::Agent(a) => views::agent::run(a).await,
            Command::Journal(a) => views::journal::run(a, None),
        }
    })
}
