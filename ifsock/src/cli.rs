//! Command-line interface.
use clap::{Parser, Subcommand};

use crate::views::{
    abort::AbortArgs, agent::AgentArgs, doctor::DoctorArgs, hung::HungArgs, journal::JournalArgs, sockets::SocketsArgs, teardown::TeardownArgs,
    tun::TunArgs, watch::WatchArgs,
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

impl Cli {
    /// Refuses combinations that clap cannot see, because `--netns` is global: `--netns NAME`
    /// with a subcommand's `--all-netns`.
    ///
    /// # Errors
    /// The combination, with the fix.
    pub fn check(&self) -> anyhow::Result<()> {
        let (name, all_netns) = match &self.command {
            Command::Sockets(a) => ("sockets", a.all_netns),
            Command::Hung(a) => ("hung", a.all_netns),
            Command::Abort(a) => ("abort", a.all_netns),
            _ => return Ok(()),
        };
        if let (Some(ns), true) = (&self.netns, all_netns) {
            anyhow::bail!(
                "--netns {ns} and {name} --all-netns contradict each other: --all-netns lists every namespace; drop --netns, or drop --all-netns to list only {ns}"
            );
        }
        Ok(())
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List TCP/UDP sockets and the interface each is tied to (device, address, wildcard), with owners.
    #[command(after_help = "Examples:\n  ifsock sockets --iface eth0\n  ifsock --netns blue sockets --stranded --json\n  ifsock sockets --all-netns --json | jq 'select(.binding == \"device\")'")]
    Sockets(SocketsArgs),
    /// Stream interface changes (created, up/down, renamed, deleted, recreated, moved) with the
    /// sockets tied to the interface and the task that caused the change.
    #[command(after_help = "Examples:\n  ifsock watch --iface wg0\n  ifsock --netns blue watch --json --sockets-inline\n  ifsock watch --all-netns --no-sockets --json")]
    Watch(WatchArgs),
    /// Tasks blocked receiving on a socket: for how long, on which socket and interface, even
    /// after the socket's fd was closed.
    #[command(after_help = "Examples:\n  ifsock hung --min-blocked 5s\n  ifsock hung --all-netns --json\n  ifsock hung --follow --interval 1s")]
    Hung(HungArgs),
    /// Set an interface down, show for a grace period what each socket and task tied to it sees
    /// (send errors, woken or stranded receivers, closes), then delete it.
    #[command(after_help = "Examples:\n  ifsock teardown --dry-run tun0\n  ifsock teardown --grace 2s --yes veth-a\n  ifsock teardown --abort-stranded --json --yes wg1")]
    Teardown(TeardownArgs),
    /// tun/tap devices: flags, attached fds, each queue's state and backlog, and queues that
    /// fill up with nobody reading them.
    #[command(after_help = "Examples:\n  ifsock tun\n  ifsock tun --interval 500ms --json tun0")]
    Tun(TunArgs),
    /// Destroy exactly the selected sockets (by inode, stranded, owner pid) so that threads stuck
    /// on them wake with ECONNABORTED; reports each socket and what each waiter saw.
    #[command(after_help = "Examples:\n  ifsock abort --stranded --dry-run\n  ifsock abort --stranded --iface eth1 --yes\n  ifsock abort --inode 123456 --json --yes")]
    Abort(AbortArgs),
    /// Check the kernel (BTF, lockdown, tracefs/bpffs) and which probes load, and why not.
    #[command(after_help = "Examples:\n  ifsock doctor\n  ifsock doctor --json")]
    Doctor(DoctorArgs),
    /// Long-running recorder: follows every netns, journals changes and stranded sockets, and
    /// serves OpenMetrics at http://127.0.0.1:9469/metrics.
    #[command(after_help = "Examples:\n  ifsock agent\n  ifsock agent --listen 127.0.0.1:9469 --receivers --journal /var/lib/ifsock/journal")]
    Agent(AgentArgs),
    /// The history an agent journaled (`--netns NAME|INODE` filters instead of entering).
    #[command(after_help = "Examples:\n  ifsock journal --since 10m\n  ifsock journal --iface eth0 --since 2h --json")]
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


/// The longest interval or duration any option accepts (24 h): anything longer is a typo.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The shortest period a repeating option accepts (1 ms): 0 would spin.
pub const MIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);

/// A period between repeated actions (`hung --interval`, `tun --interval`): 1ms to 24h.
///
/// # Errors
/// Not a duration (see [`parse_duration`]), or outside 1ms..=24h, with the range in the message.
pub fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_PERIOD || d > MAX_DURATION {
        return Err(format!("{s:?} is out of range: use 1ms to 24h"));
    }
    Ok(d)
}

/// A wait or threshold where 0 means "none" or "at once" (`--grace`, `--min-blocked`,
/// `--stranded-after`; `--reconcile-every`, where 0 turns it off): 0 to 24h.
///
/// # Errors
/// Not a duration (see [`parse_duration`]), or over 24h, with the range in the message.
pub fn parse_bounded_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is out of range: use 0 to 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_subcommand_has_examples_in_its_help_and_each_parses() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let examples: Vec<&str> = help.lines().filter_map(|l| l.trim().strip_prefix("ifsock ")).collect();
            assert!(!examples.is_empty(), "{} --help has no example", sub.get_name());
            for ex in examples {
                // Up to a pipe into another tool.
                let args = ex.split('|').next().unwrap_or_default().split_whitespace();
                let parsed = Cli::try_parse_from(std::iter::once("ifsock").chain(args));
                assert!(parsed.is_ok(), "example `ifsock {ex}` does not parse: {:?}", parsed.err());
            }
        }
    }

    #[test]
    fn periods_refuse_zero_and_more_than_a_day() {
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_positive_duration("24h"), Ok(MAX_DURATION));
        for bad in ["0", "0s", "0.0001s", "25h", "999999h"] {
            let e = parse_positive_duration(bad).err().unwrap_or_default();
            assert!(e.contains("1ms to 24h"), "{bad}: {e}");
        }
        assert!(parse_positive_duration("5x").is_err());
    }

    #[test]
    fn bounded_durations_allow_zero_but_not_more_than_a_day() {
        assert_eq!(parse_bounded_duration("0"), Ok(Duration::ZERO));
        assert!(parse_bounded_duration("999999h").err().unwrap_or_default().contains("0 to 24h"));
    }
}

/// Asks `prompt` + `proceed? [y/N]` on stderr and reads the answer from the terminal (without
/// blocking the runtime). `Ok(true)` only for `y`/`yes`.
///
/// # Errors
/// stdin could not be read.
pub async fn ask_proceed(prompt: &str) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    eprint!("{prompt}proceed? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the confirmation")?
    .context("reading the confirmation from stdin")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}
