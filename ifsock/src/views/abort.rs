//! `ifsock abort`: destroy exactly the selected sockets, so that what is stuck on them wakes
//! with `ECONNABORTED`, and report what each waiter saw.
//!
//! args → snapshot per netns (socket iterator with cookies, one rtnetlink dump) → health
//! (`model::stranded::health`) and waiters (procfs receivers, `kernel::waiters`) →
//! `engine::abort::select` → confirm → [`destroy::execute`] (kfunc iterator, else sock_diag;
//! then the observation window) → `render::abort`.
use std::io::IsTerminal as _;

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    args::AbortArgs,
    engine::abort::{self, Outcome, Selector, Target},
    kernel::{
        netlink,
        netns::{self, NetnsHandle},
        signals::{Interrupted, Signals},
    },
    journal,
    model::{link::Dump, socket::Socket, stranded},
    probes::{snapshot, Probes},
    sources::{destroy, receivers::journal_dir},
    render,
};

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
    // The journal names deleted ifindexes: `--iface NAME` selects the sockets still bound to
    // any ifindex NAME had, and `device_deleted` reports carry the last name.
    let mut seen = Vec::new();
    if let Some(dir) = journal_dir(args.journal.as_deref())? {
        for ino in &scope {
            seen.extend(journal::seen_deletions(&dir, *ino).map_err(|e| anyhow!("reading the journal {}: {e}", dir.display()))?);
        }
    }
    let iface = match &args.iface {
        None => None,
        Some(name) => {
            let mut found: Vec<_> = dumps.iter().filter_map(|(ino, d)| d.links.iter().find(|l| &l.name == name).map(|l| (*ino, l.ifindex))).collect();
            for (ino, d) in &dumps {
                let dead = journal::deleted_ifindexes_named(&seen, *ino, name);
                found.extend(dead.into_iter().filter(|i| !d.links.iter().any(|l| l.ifindex == *i)).map(|i| (*ino, i)));
            }
            if found.is_empty() {
                bail!(
                    "no interface named {name:?} in netns {here}{}, now or (by the journal) before (a deleted interface's sockets are selected by --inode; see `ifsock sockets`)",
                    if args.all_netns { " or any other netns" } else { "" }
                );
            }
            Some((name.clone(), found))
        }
    };
    let health = |s: &Socket| -> Option<stranded::Stranded> {
        let (_, d): &(_, Dump) = dumps.iter().find(|(ino, _)| *ino == s.netns)?;
        stranded::health(s, &d.links, &d.addrs, &seen)
    };
    // The wait queues of our netns and of each other one read (the /proc pass where they
    // cannot be read).
    let spaces = std::iter::once(None).chain(others.iter().map(Some));
    let all_waiters = destroy::waiters_exact(&mut probes, spaces, &sockets, &sockets);
    let sel = Selector { inodes: args.inodes.clone(), stranded: args.stranded, iface, pid: args.pid };
    let (targets, skipped) = abort::select(&sockets, &scope, &sel, &all_waiters, health)?;
    let waiters: Vec<_> = all_waiters.into_iter().filter(|w| targets.iter().any(|t| t.socket.inode == w.socket)).collect();
    let mech = destroy::choose(args.via, &targets)?;
    if args.dry_run {
        let outcomes = vec![Outcome::WouldDestroy; targets.len()];
        let r = abort::report(here, true, Some(mech.via), mech.refused.clone(), args.observe.as_millis() as u64, &targets, &outcomes, &waiters, &Default::default(), 0, skipped);
        return render::abort::print(&r, args.json);
    }
    // Declining is an answer, not a failure: exit 0, and say that nothing changed.
    if !args.yes && !confirm(&targets).await? {
        render::err_line("declined at the prompt: nothing changed, no socket destroyed");
        return Ok(());
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

/// Asks on the terminal (`Ok(false)`: declined); refuses without one.
async fn confirm(targets: &[Target]) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to destroy {} socket(s) without confirmation: stdin is not a terminal; pass --yes to confirm, or --dry-run to see what would be destroyed", targets.len());
    }
    render::prompt::ask_proceed(&render::abort::confirm_prompt(targets)).await
}
