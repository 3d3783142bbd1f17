//! `ifsock watch`: a live stream of interface changes with the sockets tied to the interface
//! at that moment and the task that caused the change. This file does the I/O (probes,
//! netlink, snapshots, receiver scans, signals); `engine::watch` correlates, `render::watch` prints.
//!
//! Start-up race (seed 004): we subscribe to the rtnetlink groups *before* dumping, so a change
//! that happens during the dump is queued on the subscription and applied on top of the dump.
//! Loss (seed 002): `ENOBUFS` triggers an immediate re-dump and diff (`source: resync`); a
//! periodic re-dump (`--reconcile-every`) catches silent loss (`source: reconcile`).
use std::{collections::BTreeMap, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::sync::mpsc;

use crate::{
    args::WatchArgs,
    engine::watch::{Config, Ready, ReceiverScan, Removal, Source, WatchEngine, WatchRecord},
    kernel::{
        netlink::{self, Received},
        netns::{self, NetnsHandle},
        signals::Signals,
        waiters::WaiterIndex,
    },
    model::ids::NetnsIno,
    probes::{plan, Probes},
    render,
    sources::{
        follow::{kernel_input, now, open_ns, NetlinkMsg, NsIo, Snapshots},
        receivers::ReceiverScanner,
    },
};

/// Runs `watch` until SIGINT/SIGTERM (exit status 0), `--count` events, or the loss of the
/// watched netns (exit status 1, unless `--all-netns`).
///
/// # Errors
/// Probe loading, netlink subscription or dump failures; the watched netns was deleted.
pub async fn run(args: WatchArgs) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut probes = Probes::load(u64::MAX)?;
    // Device probes are required; link requests and socket errors are evidence (warned about
    // and left out when refused, unless forced); the receive probes only with
    // --record-receives (receivers come from the sockets' wait queues without them).
    let forced = plan::Forced { probe_set: args.probe_set, sock_error_probe: args.sock_error_probe, record_receives: args.record_receives };
    let applied = probes.apply(&plan::WATCH, forced)?;
    let selection = applied.device.clone().ok_or_else(|| anyhow!("watch: device probes reported attached without a selection"))?;
    let recv_selection = applied.recv.clone();
    let (sock_errors, sock_errors_refused) = match &applied.sock_errors {
        Some(a) => (Some(a.probe), a.tp_btf_refused.as_ref().map(|r| format!("tp_btf: {r}"))),
        None => (None, applied.skipped.iter().find(|s| s.group == plan::Group::SockErrors).map(|s| s.reason.clone())),
    };
    let mut events = probes.events()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<NetlinkMsg>();
    let config = Config { iface: args.iface.clone(), sockets: !args.no_sockets, recv_tracking: true, stranded_after: args.stranded_after, sockets_after: !args.sockets_inline };
    let mut engine = WatchEngine::new(config);
    let mut spaces: BTreeMap<NetnsIno, NsIo> = BTreeMap::new();
    let emit = |records: Vec<WatchRecord>| -> Result<()> { records.iter().try_for_each(|r| render::watch::record(r, args.json)) };
    let mut rcvbuf = None;
    // Without --all-netns: the netns we run in, and its name, whose removal ends the watch.
    let mut own: Option<(NetnsIno, String)> = None;
    let handles: Vec<Option<NetnsHandle>> = if args.all_netns { netns::all().into_iter().map(Some).collect() } else { vec![None] };
    // Names present at start, for `--iface NAME` that does not exist (yet).
    let mut names: Vec<String> = Vec::new();
    for h in handles {
        let (ino, name, io, dump, effective) = match open_ns(h, args.rcvbuf, tx.clone()).await {
            Ok(opened) => opened,
            // A namespace can vanish between listing and opening.
            Err(e) if args.all_netns => {
                tracing::debug!("netns not followed: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        rcvbuf = rcvbuf.or(effective);
        names.extend(dump.links.iter().map(|l| l.name.clone()));
        if !args.all_netns {
            own = name.clone().map(|n| (ino, n));
        }
        engine.add_netns(ino, name, dump, false, &now(), &mut Snapshots { probes: &mut probes, spaces: &spaces });
        spaces.insert(ino, io);
    }
    // receiver_stranded comes from receiver scans (the wait queues, or /proc where they cannot
    // be read): possible with or without the receive probes.
    let recv_tracking = true;
    let ready = Ready { netns: engine.netns(), probe_set: selection, recv_probe_set: recv_selection, links: engine.link_count(), recv_tracking, sock_errors, sock_errors_refused, rcvbuf: rcvbuf.map(|b| b as u64) };
    emit(vec![WatchRecord::Ready(ready)])?;
    if let Some(name) = args.iface.as_deref().filter(|n| !names.iter().any(|x| x == n)) {
        render::err_line(&render::watch::waiting_for_line(name, args.all_netns, &names));
    }
    let mut reconcile = (!args.reconcile_every.is_zero()).then(|| {
        let mut t = tokio::time::interval(args.reconcile_every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    if let Some(t) = reconcile.as_mut() {
        t.tick().await;
    }
    let mut stranded_tick = tokio::time::interval(Duration::from_millis(250));
    // A receiver scan (the /proc pass and its socket snapshots) in flight on a blocking thread.
    let scanner = ReceiverScanner::new(&probes)?;
    let mut scan: Option<(ReceiverScan, tokio::task::JoinHandle<Result<Vec<crate::model::receiver::HungReceiver>>>)> = None;
    // Namespaces come and go: /run/netns and /proc/*/ns/net are re-read every second.
    let mut discovery = tokio::time::interval(Duration::from_secs(1));
    let mut lost_own = None;
    loop {
        if rx.is_empty() {
            emit(engine.flush_change_sockets(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
        }
        emit(engine.flush_sock_errors(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
        if args.count.is_some_and(|c| engine.counters().events >= c) || lost_own.is_some() {
            break;
        }
        // Biased: a queued netlink message is handled before any scan or tick (which would
        // delay its line by a /proc pass: ~10-35 ms measured), signals before everything.
        tokio::select! {
            biased;
            _ = signals.recv() => break,
            msg = rx.recv() => {
                let Some((ino, received)) = msg else { break };
                // Evidence is written at syscall entry, before the kernel acts: drain it first.
                events.drain().into_iter().filter_map(kernel_input).for_each(|i| engine.on_kernel(i));
                emit(engine.flush_sock_errors(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
                let records = match received? {
                    Received::Updates(updates) => engine.on_updates(ino, updates, &now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }),
                    Received::Overrun => {
                        engine.on_overrun(ino);
                        tracing::warn!("rtnetlink ENOBUFS in netns {ino}: events were lost, re-dumping");
                        redump(&mut engine, &mut probes, &spaces, ino, Source::Resync).await?
                    }
                };
                emit(records)?;
                // A burst queued on the channel shares its snapshots and is judged once, after
                // its last datagram.
                // The netlink readers run on this thread: let them queue what the kernel has
                // sent meanwhile (the veth peer's notification) before asking.
                tokio::task::yield_now().await;
                engine.more_queued(!rx.is_empty());
                // Sockets after (the default): queued changes are printed before any socket is read.
                if rx.is_empty() {
                    emit(engine.flush_change_sockets(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
                    emit(health(&mut engine, &mut probes, &spaces).await?)?;
                }
            }
            batch = events.next_batch() => {
                batch?.into_iter().filter_map(kernel_input).for_each(|i| engine.on_kernel(i));
            }
            _ = discovery.tick(), if args.all_netns || own.is_some() => {
                if let Some((ino, name)) = &own {
                    // `ip netns del` only unmounts the name: our threads keep the netns alive
                    // until we exit, which we do now so that it goes as the user expects.
                    if netns::named_ino(name) != Some(*ino) {
                        let removal = Removal { still_exists: true, held_by_ifsock: true, other_holders: netns::holders(*ino) };
                        emit(engine.remove_netns(*ino, removal, &now()))?;
                        lost_own = Some(format!("{ino} ({name})"));
                    }
                    continue;
                }
                let present = netns::all();
                for ino in engine.netns().into_iter().filter(|i| !present.iter().any(|h| h.ino == *i)) {
                    // Unreachable by name and by process: only our handle and sockets keep it.
                    let removal = Removal { still_exists: true, held_by_ifsock: true, other_holders: Vec::new() };
                    emit(engine.remove_netns(ino, removal, &now()))?;
                    spaces.remove(&ino);
                }
                for h in present {
                    if engine.follows(h.ino) {
                        continue;
                    }
                    match open_ns(Some(h), args.rcvbuf, tx.clone()).await {
                        Ok((ino, name, io, dump, _)) => {
                            spaces.insert(ino, io);
                            emit(engine.add_netns(ino, name, dump, true, &now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
                        }
                        Err(e) => tracing::debug!("netns not followed: {e:#}"),
                    }
                }
            }
            _ = stranded_tick.tick(), if engine.wants_receiver_scan() && scan.is_none() => {
                // The pass over /proc/*/task/*/syscall and the socket snapshots run on a blocking
                // thread, so netlink input that arrives meanwhile is printed at once (the scan's
                // result is the branch below; it judges only the changes pending now).
                let (ctx, covers) = engine.begin_receiver_scan();
                scan = Some((covers, scanner.start(ctx, engine.following_stranded())));
            }
            receivers = async { match scan.as_mut() { Some(s) => (&mut s.1).await, None => std::future::pending().await } }, if scan.is_some() => {
                let Some((covers, _)) = scan.take() else { continue };
                let receivers = receivers.context("receiver scan")??;
                emit(engine.on_scanned_receivers(covers, &receivers, &now()))?;
            }
            _ = async { match reconcile.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                engine.on_reconcile();
                for ino in engine.netns() {
                    emit(redump(&mut engine, &mut probes, &spaces, ino, Source::Reconcile).await?)?;
                }
                emit(health(&mut engine, &mut probes, &spaces).await?)?;
            }
        }
    }
    events.drain().into_iter().filter_map(kernel_input).for_each(|i| engine.on_kernel(i));
    emit(engine.flush_change_sockets(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
    emit(engine.flush_sock_errors(&now(), &mut Snapshots { probes: &mut probes, spaces: &spaces }))?;
    let bpf = probes.counters().map_err(|e| tracing::warn!("eBPF counters unreadable: {e:#}")).ok();
    // Release every namespace before the exit status is decided: nothing keeps them alive.
    drop(spaces);
    emit(engine.finish(bpf))?;
    if let Some(what) = lost_own {
        bail!("the watched netns {what} was deleted (ip netns del): nothing left to watch; ifsock released it by exiting (use --all-netns to keep watching the others)");
    }
    Ok(())
}

/// Socket health after the changes just emitted: a fresh address dump per netns whose changes
/// may have moved it, and, only if some socket did change health, one waiter pass over `/proc`
/// for all of them (so a burst costs one pass, not one per change).
async fn health(engine: &mut WatchEngine, probes: &mut Probes, spaces: &BTreeMap<NetnsIno, NsIo>) -> Result<Vec<WatchRecord>> {
    for ino in engine.health_due() {
        let addrs = match spaces.get(&ino) {
            Some(io) => match netlink::dump(&io.rtnl).await {
                Ok(d) => Some(d.addrs),
                Err(e) => {
                    tracing::warn!("address dump of netns {ino} failed, socket health judged with the last known address details: {e:#}");
                    None
                }
            },
            None => None,
        };
        engine.on_health(ino, addrs, &now(), &mut Snapshots { probes, spaces });
    }
    if !engine.wants_waiters() {
        return Ok(Vec::new());
    }
    // The followed namespaces' wait queues (a few ms); the /proc fallback, where the walk
    // cannot run, is run here too (it used to run on a blocking thread).
    let index: WaiterIndex = crate::sources::waiters::index(probes, spaces.values().map(|io| io.handle.as_ref()));
    Ok(engine.flush_health(&index, &now()))
}

/// Re-dumps `ino` and hands the dump to the engine (`resync` after ENOBUFS, `reconcile`).
async fn redump(engine: &mut WatchEngine, probes: &mut Probes, spaces: &BTreeMap<NetnsIno, NsIo>, ino: NetnsIno, source: Source) -> Result<Vec<WatchRecord>> {
    let Some(io) = spaces.get(&ino) else { return Ok(Vec::new()) };
    let dump = netlink::dump(&io.rtnl).await.context("re-dumping links")?;
    Ok(engine.on_dump(ino, dump, source, &now(), &mut Snapshots { probes, spaces }))
}
