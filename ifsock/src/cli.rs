//! Command-line interface.
use clap::{Parser, Subcommand};

use crate::views::{
    agent::AgentArgs, doctor::DoctorArgs, journal::JournalArgs, hung::HungArgs, sockets::SocketsArgs, teardown::TeardownArgs, tun::TunArgs, watch::WatchArgs,
};

/// ifsock: which sockets are tied to an interface, what happened to it, and who is stuck.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path.
    #[arg(long, short = 'n', global = true)]
    pub netns: Option<String>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List TCP/UDP sockets and the interface each is tied to (device, address, wildcard), with owners.
    Sockets(SocketsArgs),
    /// Stream interface changes (created, up/down, renamed, deleted, recreated, moved) with the
    /// sockets tied to the interface and the task that caused the change.
    Watch(WatchArgs),
    /// Tasks blocked receiving on a socket: for how long, on which socket and interface, even
    /// after the socket's fd was closed.
    Hung(HungArgs),
    /// Set an interface down, show for a grace period what each socket and task tied to it sees
    /// (send errors, woken or stranded receivers, closes), then delete it.
    Teardown(TeardownArgs),
    /// tun/tap devices: flags, attached fds, each queue's state and backlog, and queues that
    /// fill up with nobody reading them.
    Tun(TunArgs),
    /// Check the kernel (BTF, lockdown, tracefs/bpffs) and which probes load, and why not.
    Doctor(DoctorArgs),
    /// Long-running recorder: follows every netns, journals changes and stranded sockets, and
    /// serves OpenMetrics at http://127.0.0.1:9469/metrics.
    Agent(AgentArgs),
    /// The history an agent journaled (`--netns NAME|INODE` filters instead of entering).
    Journal(JournalArgs),
}

/// Parses a duration such as `500ms`, `5s`, `2m`, `1h`, or plain seconds.
///
/// # Errors
/// Unknown unit or not a number.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range (examples: 500ms, 5s, 2m)"))
}

