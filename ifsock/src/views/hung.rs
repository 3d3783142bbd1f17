//! `ifsock hung`: tasks blocked receiving on a socket, for how long, on which socket and
//! interface — even when the socket's fd was already closed (seed 003).
//!
//! Args → [`crate::sources::receivers`] (the sockets' wait queues, procfs, snapshots, and the
//! probes' in-flight records with `--record-receives`) →
//! [`crate::engine::receivers`] → [`crate::render::hung`]. The evidence rules (exact, current_fd, inferred…) are the engine's.
//! Event loops (epoll, poll, select) waiting on stranded sockets come from socket health and
//! the waiter pass ([`engine::health::event_loop_waiters`](crate::engine::health::event_loop_waiters)),
//! listed apart from the receivers.
use std::time::Duration;

use anyhow::{bail, Result};

pub use crate::engine::receivers::Context;
use crate::{
    args::HungArgs,
    engine::receivers::{Filter, NetnsFilter},
    kernel::{
        netlink::{self, Received, Subscription},
        netns::{self},
        procfs::{self},
        signals::Signals,
    },
    model::{
        ids::NetnsIno,
        link::{ChangeKind, LinkTable, Update},
    },
    probes::{plan, snapshot, Probes},
    render::{self, hung::Style},
    sources::receivers::{consult_journal, event_loops, journal_dir, scan},
};
pub use crate::model::receiver::{tie_strands, Certainty, HungReceiver, IfaceState, IfaceTie};

/// Default `--interval` with `--follow`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `hung`.
///
/// # Errors
/// A `--pid` that does not exist, probe loading or netlink failures. `--follow` ends with
/// `Ok` on SIGINT or SIGTERM.
pub async fn run(args: HungArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        if !procfs::pid_exists(pid) {
            bail!("--pid {pid}: no such process (it exited, or lives in another pid namespace); find the pid with `ps -e`");
        }
    }
    let mut probes = Probes::load(u64::MAX)?;
    let own = netns::current_ino()?;
    let filter = Filter {
        min_blocked_ns: args.min_blocked.as_nanos() as u64,
        pid: args.pid,
        netns: if args.all_netns { NetnsFilter::All } else { NetnsFilter::Only(own) },
    };
    let style = Style {
        json: args.json,
        follow: args.follow,
        netns_names: args.all_netns.then(|| netns::named().into_iter().map(|(name, ino)| (ino, name)).collect()),
        scope: if args.all_netns {
            "every netns".to_string()
        } else {
            match netns::named().into_iter().find(|(_, i)| *i == own) {
                Some((name, _)) => format!("netns {name} ({own})"),
                None => format!("netns {own}"),
            }
        },
        filters: {
            let mut f = vec![format!("blocked at least {}", render::human_ns(args.min_blocked.as_nanos() as u64))];
            if let Some(pid) = args.pid {
                f.push(format!("--pid {pid}"));
            }
            f
        },
    };
    let mut ctx = Context::default();
    if !args.follow {
        // No receive probes: they would only record receives that start during this scan, and
        // detaching ten syscall tracepoints costs ~60 ms each (an RCU grace period per
        // unregister, measured on 6.18): most of a one-shot run's time.
        ctx.links.insert(own, snapshot::links(None).await?);
        let mut receivers = scan(&mut probes, &ctx, &filter).await?;
        if let Some(dir) = journal_dir(args.journal.as_deref())? {
            consult_journal(&mut receivers, &dir)?;
        }
        let loops = event_loops(&mut probes, &filter, own).await?;
        return render::hung::receivers(&receivers, &loops, &style);
    }
    // Receivers come from the wait queues at each interval; the receive probes (every receive
    // syscall of the host on the traced path) only when asked, for exact start times.
    let selection = if args.record_receives || args.probe_set.is_some() {
        let forced = plan::Forced { probe_set: args.probe_set, sock_error_probe: None, record_receives: true };
        Some(probes.apply(&plan::HUNG, forced)?.recv.ok_or_else(|| anyhow::anyhow!("hung: receive probes reported attached without a selection"))?)
    } else {
        None
    };
    let mut signals = Signals::new()?;
    // Subscribe before dumping so that no deletion falls between the two.
    let mut sub = Subscription::open(None)?;
    let handle = netlink::connect()?;
    let mut table = LinkTable::from_links(netlink::dump_links(&handle).await?);
    let attached: Vec<String> = probes.attached.iter().map(ToString::to_string).collect();
    render::hung::ready(args.json, own, selection.as_ref(), &attached)?;
    let mut tick = tokio::time::interval(args.interval.unwrap_or(DEFAULT_INTERVAL));
    loop {
        tokio::select! {
            // A follower has no unfinished work: SIGINT or SIGTERM is its normal end (exit 0,
            // like `watch`); a second signal still kills at once (see `Signals::recv`).
            _ = signals.recv() => return Ok(()),
            r = sub.recv() => match r? {
                Received::Updates(updates) => {
                    for u in updates {
                        remember_deleted(&mut table, &mut ctx, own, u);
                    }
                }
                Received::Overrun => {
                    table.diff_and_replace(netlink::dump_links(&handle).await?);
                }
            },
            _ = tick.tick() => {
                ctx.links.insert(own, table.links().cloned().collect());
                let receivers = scan(&mut probes, &ctx, &filter).await?;
                let loops = event_loops(&mut probes, &filter, own).await?;
                render::hung::receivers(&receivers, &loops, &style)?;
            }
        }
    }
}

/// Applies a link update; a deleted link is remembered with its last addresses, so that its
/// sockets' receivers stay tied to it (state `deleted`).
fn remember_deleted(table: &mut LinkTable, ctx: &mut Context, own: NetnsIno, u: Update) {
    let prior = match &u {
        Update::DelLink { ifindex, .. } => table.get(*ifindex).cloned(),
        _ => None,
    };
    for c in table.apply(u) {
        if c.kind == ChangeKind::Deleted {
            if let Some(link) = prior.clone() {
                ctx.deleted.entry(own).or_default().push(link);
            }
        }
    }
}
