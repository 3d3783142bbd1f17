//! `ifsock teardown IFACE`: set an interface down, observe for a grace period what the sockets
//! tied to it (and to what the delete takes with it) see, then delete it. The step sequence and
//! the observation live in [`crate::engine::teardown`]; this view does the I/O it asks for.
//!
//! Seed 000: deleting an interface directly breaks sockets bound to it silently; setting it down
//! first makes senders get an error (`ip_route_output_key_hash_rcu()`: `ENETUNREACH` when the
//! bound device is not `IFF_UP`) while the interface still exists.
//!
//! Race guarded: the probes and the rtnetlink subscription are attached before the plan is
//! re-taken and the down sent, so a socket or receive that appears after the snapshot is still
//! traced, and an interface deleted by someone else during grace is seen (and not deleted again).
use std::{io::IsTerminal as _, time::Duration};

use anyhow::{anyhow, bail, Result};
use futures::FutureExt as _;

use crate::{
    args::TeardownArgs,
    engine::teardown::{Next, Teardown},
    kernel::{
        clock::monotonic_ns,
        netlink::{self, Received, Subscription},
        signals::{Interrupted, Signals},
    },
    model::link::Update,
    probes::{events::EventStream, plan, Probes},
    render::teardown as out,
    sources::teardown::{self as gather, abort_stranded, would_abort},
};

/// Receives in flight at least this long (ns) emit a `RecvDone` event when they return.
pub const RECV_REPORT_MIN_NS: u64 = 1_000_000;
/// Longest accepted grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Runs `teardown`.
///
/// # Errors
/// Unknown interface, `lo`, a device the kernel cannot delete, no confirmation, probe loading
/// failures, a down/delete request the kernel refused, or [`Interrupted`] (the report, with the
/// state the interface was left in, is printed first; with `--json` always one object).
pub async fn run(args: TeardownArgs) -> Result<()> {
    let prepared = prepare(&args).await;
    let (mut probes, handle, mut td) = match prepared {
        Ok(p) => p,
        Err(e) => return refused(&args, None, e),
    };
    if args.dry_run {
        let blocked = gather::blocked_now(&mut probes, &td);
        td.blocked_now(&blocked);
        if args.abort_stranded {
            match would_abort(&td, &blocked, args.observe) {
                Ok(r) => td.abort_done(r),
                Err(e) => td.fail(format!("--abort-stranded: {e:#}")),
            }
        }
        return finish(td, &probes, args.json);
    }
    if !args.yes {
        match confirm(&td).await {
            Ok(true) => {}
            // Declining is an answer, not a failure: exit 0, and say that nothing changed.
            Ok(false) => {
                let ifname = td.plan().ifname.clone();
                let declined = anyhow!("declined at the prompt: nothing changed, {ifname} left untouched");
                crate::render::err_line(&format!("{declined}"));
                return refused(&args, Some(td), declined).or(Ok(()));
            }
            Err(e) => return refused(&args, Some(td), e),
        }
    }
    if let Err(e) = start(&args, &mut probes, &handle, &mut td).await {
        td.fail(format!("{e:#}"));
    }
    finish(td, &probes, args.json)
}

/// A refusal before anything changed: stdout stays empty, except with `--json`, which always
/// ends in one object.
fn refused(args: &TeardownArgs, td: Option<Teardown>, e: anyhow::Error) -> Result<()> {
    if args.json {
        let error = format!("{e:#}");
        match td {
            Some(mut td) => {
                td.fail(error);
                out::json_line(&td.report(None))?;
            }
            None => out::json_line(&out::Refusal::new(&args.iface, args.dry_run, error))?,
        }
    }
    Err(e)
}

async fn prepare(args: &TeardownArgs) -> Result<(Probes, rtnetlink::Handle, Teardown)> {
    if args.grace > MAX_GRACE {
        bail!("--grace {:?} is longer than {}h: pick a shorter grace period", args.grace, MAX_GRACE.as_secs() / 3600);
    }
    let mut probes = Probes::load(RECV_REPORT_MIN_NS)?;
    let handle = netlink::connect()?;
    let (p, _) = gather::plan(&mut probes, &handle, &args.iface, args.dry_run, args.grace).await?;
    Ok((probes, handle, Teardown::new(p)))
}

/// Attaches, re-takes the plan and runs the steps the engine asks for. An error here is
/// recorded in the report (which then says what state the interface was left in).
async fn start(args: &TeardownArgs, probes: &mut Probes, handle: &rtnetlink::Handle, td: &mut Teardown) -> Result<()> {
    // From here on SIGINT/SIGTERM end the grace period instead of killing the process.
    let mut signals = Signals::new()?;
    // Every group is optional: a refused probe is reported as unobserved, never an error —
    // except the receive probes when `--record-receives` asked for them.
    let forced = plan::Forced { record_receives: args.record_receives, ..plan::Forced::default() };
    for skipped in probes.apply(&plan::TEARDOWN, forced)?.skipped {
        td.unobserved(gather::unobserved(&skipped));
    }
    if !args.record_receives {
        td.unobserved("receive wake-up times (woke_ms): not recorded without --record-receives".into());
    }
    let mut events = probes.events()?;
    let mut sub = Subscription::open(None)?;
    let ifindex = td.plan().ifindex;
    let still = netlink::dump_links(handle).await?.into_iter().any(|l| l.ifindex == ifindex && l.name == td.plan().ifname);
    if !still {
        td.vanished_before_down();
        return Ok(());
    }
    let (fresh, peers) = gather::plan(probes, handle, &args.iface, false, args.grace).await?;
    td.replan(fresh);
    let mut deadline = tokio::time::Instant::now();
    loop {
        match td.next() {
            Next::SetDown => {
                if let Some(stop) = signals.recv().now_or_never() {
                    td.interrupt(stop);
                    continue;
                }
                let blocked = gather::blocked_now(probes, td);
                td.down_sent(monotonic_ns());
                deadline = tokio::time::Instant::now().checked_add(args.grace).unwrap_or(deadline);
                let down = netlink::set_down(handle, ifindex).await;
                td.down_done(monotonic_ns(), gather::outcome(down), &blocked);
            }
            Next::Observe => {
                observe(td, handle, &mut events, &mut sub, &mut signals, deadline).await?;
                for ev in events.drain() {
                    td.on_event(&ev);
                }
                let blocked = gather::blocked_now(probes, td);
                let alive = gather::alive(probes, &peers).map_err(|e| td.unobserved(format!("closes (end-of-grace socket snapshot): {e:#}")));
                td.grace_over(&blocked, alive.ok());
                // Event loops (poll, select, epoll) waiting on a listed socket: they wait too,
                // though no receive call is blocked (one /proc pass, after the end snapshot).
                let index = crate::kernel::waiters::WaiterIndex::discover();
                for s in td.listed_sockets() {
                    let w = index.for_socket(&s);
                    td.waiters_at_end(&s, w);
                }
            }
            Next::Delete => {
                let now = netlink::dump_links(handle).await?;
                if now.iter().any(|l| l.ifindex == ifindex && l.name == td.plan().ifname) {
                    let at = monotonic_ns();
                    let del = netlink::delete(handle, ifindex).await;
                    td.delete_done(at, monotonic_ns(), gather::outcome(del));
                } else {
                    td.vanished(monotonic_ns());
                }
            }
            Next::AfterDelete if args.abort_stranded => match abort_stranded(probes, td, &peers, &mut signals, args.observe).await {
                Ok(r) => td.abort_done(r),
                Err(e) => {
                    td.fail(format!("--abort-stranded: {e:#}"));
                    td.after_delete_done();
                }
            },
            Next::AfterDelete => td.after_delete_done(),
            Next::Report => break,
        }
    }
    let gone = gather::companions_gone(td, handle, &peers).await;
    td.companions_checked(gone);
    Ok(())
}

/// Waits out the grace period: ends early when the interface vanishes or a signal arrives.
async fn observe(
    td: &mut Teardown,
    handle: &rtnetlink::Handle,
    events: &mut EventStream,
    sub: &mut Subscription,
    signals: &mut Signals,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let ifindex = td.plan().ifindex;
    let mut subscribed = true;
    while !td.has_vanished() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            stop = signals.recv() => {
                td.interrupt(stop);
                break;
            }
            batch = events.next_batch() => {
                for ev in batch? { td.on_event(&ev); }
            }
            received = sub.recv(), if subscribed => match received {
                Ok(Received::Updates(updates)) => {
                    if updates.iter().any(|u| matches!(u, Update::DelLink { ifindex: i, .. } if *i == ifindex)) {
                        td.vanished(monotonic_ns());
                    }
                }
                Ok(Received::Overrun) => {
                    // Notifications were lost: ask the kernel directly.
                    if !netlink::dump_links(handle).await?.iter().any(|l| l.ifindex == ifindex) {
                        td.vanished(monotonic_ns());
                    }
                }
                Err(e) => {
                    subscribed = false;
                    tracing::warn!("rtnetlink subscription failed, deletion by others is checked at the end only: {e:#}");
                }
            },
        }
    }
    Ok(())
}

/// Prints the report, says on stderr what state was left when stdout cannot (JSON, or a closed
/// stdout), and returns the error or interruption that ended the teardown.
fn finish(mut td: Teardown, probes: &Probes, json: bool) -> Result<()> {
    let counters = probes.counters().map_err(|e| td.unobserved(format!("eBPF counters unreadable: {e:#}")));
    let report = td.report(counters.ok());
    let printed = out::emit(&report, json);
    // The report is printed after the last step, so a closed stdout never stops a teardown
    // halfway; stderr then says what was done.
    match (out::state_line(&report), &printed) {
        (Some(l), _) if json || printed.is_err() => crate::render::err_line(&format!("ifsock: {l}")),
        (None, Err(_)) if !report.dry_run => crate::render::err_line(&format!("ifsock: stdout closed; {}", out::left(&report))),
        _ => {}
    }
    printed?;
    if let Some(stop) = report.signal {
        return Err(Interrupted(stop).into());
    }
    match report.error {
        Some(e) => Err(anyhow!(e)),
        None => Ok(()),
    }
}

/// Asks on the terminal (`Ok(false)`: declined); refuses without one.
async fn confirm(td: &Teardown) -> Result<bool> {
    let p = td.plan();
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to tear down {:?} without confirmation: stdin is not a terminal; pass --yes to confirm, or --dry-run to see what would be affected",
            p.ifname
        );
    }
    crate::render::prompt::ask_proceed(&out::confirm_prompt(p)).await
}
