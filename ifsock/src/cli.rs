//! Command-line interface: the `ifsock` command and its subcommands, assembled from the
//! options in [`crate::args`] (man pages and completions are generated from [`Cli`]).
use clap::{Parser, Subcommand};

use crate::args::{AbortArgs, AgentArgs, DoctorArgs, HungArgs, JournalArgs, SocketsArgs, TeardownArgs, TunArgs, WatchArgs};

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
    /// Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`).
    #[arg(long, global = true)]
    pub wide: bool,
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
            Command::Tun(a) => ("tun", a.all_netns),
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

#[cfg(test)]
mod tests {
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
}
