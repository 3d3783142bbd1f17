//! ifsock command-line entry point: parse, set up logging and the netns, run one view.
use std::process::ExitCode;

use clap::Parser;
use ifsock::{
    cli::{Cli, Command},
    kernel::{netns::NetnsHandle, signals::Interrupted},
    render, views,
};

fn main() -> ExitCode {
    map_large_allocations_apart();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    render::set_style(cli.wide);
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
            // Errors quote what the user or the system named (an interface, a path): escaped
            // like every human line.
            render::err_line(&format!("ifsock: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Fixes glibc's mmap threshold at 256 KiB. By default it rises to the size of each mapped
/// block freed (up to 32 MiB), after which large buffers come from the heap and their memory
/// stays with the process once freed: the raw socket records of a 100k-socket snapshot (10 MB,
/// freed before the file walk) then still counted at the command's peak RSS (+4.6 MB measured).
/// Mapped apart, a freed buffer is unmapped; a growing one is moved by `mremap`, not copied.
fn map_large_allocations_apart() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
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
