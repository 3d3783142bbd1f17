//! `ifsock abort`: destroy exactly the selected sockets, so that what is stuck on them wakes
//! with `ECONNABORTED`, and report what each waiter saw.
//!
//! args → snapshot per netns (socket iterator with cookies, one rtnetlink dump) → health
//! (`model::stranded::health`) and waiters (procfs receivers, `kernel::waiters`) →
//! `engine::abort::select` → confirm → [`destroy::execute`] (kfunc iterator, else sock_diag;
//! then the observation window) → `render::abort`.
use std::{io::IsTerminal as _, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    cli::parse_duration,
    engine::abort::{self, Outcome, Selector, Target, Waiter},
    kernel::{
        netlink,
        netns::{self, NetnsHandle},
        procfs,
        signals::{Interrupted, Signals},
        waiters::WaiterIndex,
    },
    model::{ids::SockInode, link::Dump, socket::Socket, stranded},
    probes::{snapshot, Probes},
    render::{self, abort::ABOUT_DESTROY},
};

pub mod destroy;

pub use destroy::ViaChoice;

/// Options of `abort`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = ABOUT_DESTROY)]
pub struct AbortArgs {
    /// Destroy the socket with this inode (`socket:[N]`); repeatable.
    #[arg(long = "inode", value_name = "N", value_parser = parse_inode)]
    pub inodes: Vec<SockInode>,
    /// Destroy stranded sockets: bound to a deleted or down device, or to an address no
    /// interface holds (the `stranded` of `sockets --json`).
    #[arg(long)]
    pub stranded: bool,
    /// With --stranded: only those tied to this interface.
    #[arg(long, requires = "stranded", value_name = "NAME")]
    pub iface: Option<String>,
    /// Only sockets owned by (or waited on by a thread of) this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Select among the sockets of every network namespace; each is destroyed inside its own.
    /// Without it (or --netns) other namespaces are never touched.
    #[arg(long)]
    pub all_netns: bool,
    /// List what would be destroyed and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
    /// How long to watch the waiters after the destroy.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub observe: Duration,
    /// Destroy mechanism.
    #[arg(long, value_enum, default_value = "auto")]
    pub via: ViaChoice,
}

fn parse_inode(s: &str) -> Result<SockInode, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("inode 0 names no socket (socket inodes start at 1; see `ifsock sockets`)".into()),
        Ok(n) => Ok(SockInode(n)),
        Err(_) => Err(format!("{s:?} is not a socket inode: give the number N of socket:[N] (see `ifsock sockets`)")),
    }
}

/// Threads waiting on `targets`: receivers blocked on them (a closed fd is tied to the only
/// ownerless socket of its netns among `all`), then the epoll/poll/select waiters and the
/// receivers `kernel::waiters` finds through open fds.
pub fn waiters(targets: &[Socket], all: &[Socket]) -> Vec<Waiter> {
    let mut out = abort::waiters_of(targets, all, &procfs::blocked_receivers(None));
    let index = WaiterIndex::discover();
    for t in targets {
        abort::add_indexed(&mut out, t.inode, &index.for_socket(t));
    }
    out
}

/// Runs `abort`.
///
/// # Errors
/// Bad selection, no confirmation, probe loading, or any selected socket not destroyed.
pub async fn run(args: AbortArgs) -> Result<()> {
    let mut probes = Probes::load(u64::MAX)?;
    let here = netns::current_ino()?;
    let others: Vec<NetnsHandle> = if args.all_netns { netns::all().into_iter().filter(|h| h.ino != here).collect() } else { Vec::new() };
    let mut sockets = Vec::new();
    let mut dumps = Vec::new();
    for h in std::iter::once(None).chain(others.iter().map(Some)) {
        let ino = h.map_or(here, |h| h.ino);
        match read_netns(&mut probes, h, ino).await {
            Ok((s, d)) => {
                sockets.extend(s);
                dumps.push((ino, d));
            }
            Err(e) if h.is_none() => return Err(e),
            // Another netns may vanish between the listing and the read: its sockets are then
            // not candidates, and the log says so.
            Err(e) => tracing::warn!("--all-netns: netns {ino} skipped: {e:#}"),
        }
    }
    let scope: Vec<_> = dumps.iter().map(|(ino, _)| *ino).collect();
    let iface = match &args.iface {
        None => None,
        Some(name) => {
            let found: Vec<_> = dumps.iter().filter_map(|(ino, d)| d.links.iter().find(|l| &l.name == name).map(|l| (*ino, l.ifindex))).collect();
            if found.is_empty() {
                bail!("no interface named {name:?} in netns {here}{} (a deleted interface's sockets are selected by --inode; see `ifsock sockets`)", if args.all_netns { " or any other netns" } else { "" });
            }
            Some((name.clone(), found))
        }
    };
    let health = |s: &Socket| -> Option<stranded::Stranded> {
        let (_, d): &(_, Dump) = dumps.iter().find(|(ino, _)| *ino == s.netns)?;
        stranded::health(s, &d.links, &d.addrs, &[])
    };
    let all_waiters = waiters(&sockets, &sockets);
    let sel = Selector { inodes: args.inodes.clone(), stranded: args.stranded, iface, pid: args.pid };
    let (targets, skipped) = abort::select(&sockets, &scope, &sel, &all_waiters, health)?;
    let waiters: Vec<_> = all_waiters.into_iter().filter(|w| targets.iter().any(|t| t.socket.inode == w.socket)).collect();
    let mech = destroy::choose(args.via, &targets)?;
    if args.dry_run {
        let outcomes = vec![Outcome::WouldDestroy; targets.len()];
        let r = abort::report(here, true, Some(mech.via), mech.refused.clone(), args.observe.as_millis() as u64, &targets, &outcomes, &waiters, &Default::default(), 0, skipped);
        return render::abort::print(&r, args.json);
    }
    if !args.yes {
        confirm(&targets).await?;
    }
    let mut signals = Signals::new()?;
    let handles: Vec<&NetnsHandle> = others.iter().collect();
    let run = destroy::Run { here, handles: &handles, waiters: &waiters, observe: args.observe };
    let r = destroy::execute(&mut probes, &mech, &run, &targets, skipped, Some(&mut signals)).await?;
    render::abort::print(&r, args.json)?;
    if let Some(stop) = r.interrupted {
        return Err(Interrupted(stop).into());
    }
    if r.failed > 0 {
        bail!("{} of {} selected socket(s) could not be destroyed (see the error of each)", r.failed, r.sockets.len());
    }
    Ok(())
}

/// The sockets of netns `ino` (opened by `h`, or ours) and one rtnetlink dump of it.
async fn read_netns(probes: &mut Probes, h: Option<&NetnsHandle>, ino: crate::model::ids::NetnsIno) -> Result<(Vec<Socket>, Dump)> {
    let what = || format!("reading the sockets and links of netns {ino}");
    let mut s = snapshot::sockets(probes, h).with_context(what)?;
    s.retain(|s| s.netns == ino);
    let d = netlink::dump(&netlink::connect_in(h).with_context(what)?).await.with_context(what)?;
    Ok((s, d))
}

/// Asks on the terminal; refuses without one.
async fn confirm(targets: &[Target]) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to destroy {} socket(s) without confirmation: stdin is not a terminal; pass --yes to confirm, or --dry-run to see what would be destroyed", targets.len());
    }
    eprintln!("about to destroy {} socket(s); each gets ECONNABORTED (TCP peers get a RST):", targets.len());
    for t in targets {
        let s = &t.socket;
        eprintln!("  {:?} {}:{} inode {} netns {} owners {}", s.protocol, s.local_addr, s.local_port, s.inode, s.netns, render::fmt::owners(&s.owners, "-"));
    }
    if !crate::cli::ask_proceed("").await? {
        return Err(anyhow!("not confirmed: no socket destroyed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_arguments_are_parsed_at_the_edge() {
        assert_eq!(parse_inode("42"), Ok(SockInode(42)));
        assert!(parse_inode("0").unwrap_err().contains("inode 0"));
        assert!(parse_inode("abc").unwrap_err().contains("not a socket inode"));
    }
}
