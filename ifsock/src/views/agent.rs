//! `ifsock agent`: a long-running recorder for fleets. Follows every netns, journals every
//! change and socket health change (`crate::journal`), and serves OpenMetrics at `/metrics`
//! and liveness at `/healthz`.
//!
//! Scrapes never wait for the event loop: the loop publishes each new [`Metrics`] value on a
//! `tokio::sync::watch` channel and the HTTP server, on a thread of its own, encodes the last
//! published value.
//!
//! Cost: nothing runs between events. Namespaces appear through the mount table (`ip netns
//! add` bind-mounts under /run/netns; `/proc/self/mountinfo` signals `POLLPRI` on every mount
//! change), links through rtnetlink, and the only timer is `--reconcile-every`.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::{
    args::AgentArgs,
    engine::{
        metrics::{Input, LostSource, Metrics, MetricsEngine},
        watch::{Config, ReceiverScan, WatchEngine, WatchRecord},
    },
    journal::{self, Journal},
    kernel::{
        netns,
        signals::{Interrupted, Signals},
    },
    model::receiver::HungReceiver,
    probes::{plan, Probes},
    sources::{
        agent::{Out, Pipeline},
        follow::{self, NetlinkMsg},
        receivers::ReceiverScanner,
    },
    render::metrics as exposition,
};


/// Least time between two socket snapshots (gauges lag a change by at most this).
const SNAPSHOT_GAP: Duration = Duration::from_millis(250);

/// `receiver_stranded` is raised again for a receiver still blocked this long after the change
/// (`--receivers` only; the default of `watch --stranded-after`).
const STRANDED_AFTER: Duration = Duration::from_secs(5);

/// Where records go: the journal, and the metrics aggregator.
struct Sink {
    journal: Journal,
    metrics: MetricsEngine,
    publish: tokio::sync::watch::Sender<Arc<Metrics>>,
}

impl Sink {
    fn take(&mut self, out: &mut Vec<Out>) {
        for o in out.drain(..) {
            let written = match &o {
                // Session records of `watch` (start, final state and counters) are not history.
                Out::Record(WatchRecord::Ready(_) | WatchRecord::State(_) | WatchRecord::Counters(_)) => Ok(()),
                // Everything else, including record types the engine gains later, is journaled.
                Out::Record(r) => self.journal.append(r),
                Out::Health(r) => self.journal.append(r),
                Out::Metric(_) => Ok(()),
            };
            // Write failures are logged and counted by the journal; serving goes on.
            if let Err(e @ journal::JournalError::Shape(_)) = written {
                tracing::warn!("journal: record not written: {e}");
            }
            if let Out::Metric(m) = o {
                self.metrics.apply(m);
            }
        }
        self.metrics.apply(Input::JournalWriteErrors(self.journal.write_errors()));
        self.publish.send_replace(Arc::new(self.metrics.values()));
    }
}

fn listen_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let fix = match e.kind() {
        std::io::ErrorKind::AddrInUse => "another process listens there: stop it, or pass --listen ADDR:PORT with a free port",
        std::io::ErrorKind::AddrNotAvailable => "no interface of this host holds that address: pass --listen with a local one",
        std::io::ErrorKind::PermissionDenied => "ports below 1024 need CAP_NET_BIND_SERVICE: pick a higher port",
        _ => "pass --listen ADDR:PORT",
    };
    anyhow::anyhow!("cannot listen on {addr}: {e} ({fix})")
}

/// Serves /metrics and /healthz on a thread with its own runtime, so that encoding a scrape
/// never runs on (or waits for) the event loop.
fn serve(listener: std::net::TcpListener, metrics: tokio::sync::watch::Receiver<Arc<Metrics>>) -> Result<()> {
    use axum::{http::header, response::IntoResponse, routing::get, Router};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("ifsock-http".into()).spawn(move || {
        rt.block_on(async move {
            let scrape = move || {
                let snapshot = metrics.borrow().clone();
                async move {
                    match exposition::encode(&snapshot) {
                        Ok(text) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], text).into_response(),
                        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response(),
                    }
                }
            };
            let app = Router::new().route("/metrics", get(scrape)).route("/healthz", get(|| async { "ok\n" }));
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!("metrics server stopped: {e}");
                    }
                }
                Err(e) => tracing::error!("metrics server: {e}"),
            }
        })
    })?;
    Ok(())
}

/// Runs the agent until SIGINT/SIGTERM, then flushes the journal, detaches every probe and
/// returns [`Interrupted`].
///
/// # Errors
/// At start: the journal directory is not writable, the listen address is taken or not
/// local, or the probes do not load (each message names the fix).
pub async fn run(args: AgentArgs) -> Result<()> {
    let mut signals = Signals::new()?;
    if args.journal_max_bytes < journal::MIN_MAX_BYTES {
        anyhow::bail!(
            "--journal-max-bytes {} is below the minimum of {} (8 segments of 4 KiB): pass a larger bound",
            args.journal_max_bytes,
            journal::MIN_MAX_BYTES
        );
    }
    let journal = Journal::open(&args.journal, args.journal_max_bytes)?;
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| listen_error(args.listen, e))?;
    listener.set_nonblocking(true)?;
    let mut probes = Probes::load(u64::MAX)?;
    let forced = plan::Forced { record_receives: args.record_receives, ..plan::Forced::default() };
    let applied = probes.apply(if args.receivers { &plan::AGENT_RECEIVERS } else { &plan::AGENT }, forced)?;
    let causes = if applied.has(plan::Group::LinkRequestHandlers) {
        "handlers"
    } else if args.causes {
        probes.apply(&plan::AGENT_CAUSES, plan::Forced::default())?;
        "tracepoint"
    } else {
        "none"
    };
    let mut metrics = MetricsEngine::new();
    metrics.apply(Input::ProbeSet { path: "sockets".into(), set: "iter".into() });
    metrics.apply(Input::ProbeSet { path: "links".into(), set: "rtnetlink".into() });
    let recv = applied.recv.map_or_else(|| "none".into(), |sel| sel.chosen.name().to_string());
    metrics.apply(Input::ProbeSet { path: "recv".into(), set: recv });
    let sock_errors = applied.sock_errors.map_or_else(|| "none".into(), |a| format!("{:?}", a.probe).to_lowercase());
    metrics.apply(Input::ProbeSet { path: "sock_errors".into(), set: sock_errors });
    metrics.apply(Input::ProbeSet { path: "causes".into(), set: causes.into() });
    let mut events = probes.events()?;
    let mounts = netns::watch_mounts()?;
    let (publish, published) = tokio::sync::watch::channel(Arc::new(metrics.values()));
    let mut sink = Sink { journal, metrics, publish };
    let (tx, mut rx) = mpsc::unbounded_channel::<NetlinkMsg>();
    // Gauges come from the agent's own rate-limited snapshots, not from one per change batch.
    let config = Config { iface: None, sockets: false, recv_tracking: args.receivers, stranded_after: STRANDED_AFTER, sockets_after: false };
    let mut pipeline = Pipeline::new(WatchEngine::new(config), tx);
    let mut out = Vec::new();
    // The mount table is watched before the first discovery: a netns added in between is seen.
    pipeline.discover(&mut probes, false, &mut out).await;
    pipeline.snapshot(&mut probes, &mut out).await;
    sink.take(&mut out);
    serve(listener, published)?;
    crate::render::err_line(&format!(
        "agent: serving http://{}/metrics, journal {} (max {} bytes), following {} netns (SIGTERM to stop)",
        args.listen,
        args.journal.display(),
        args.journal_max_bytes,
        pipeline.followed()
    ));
    let mut reconcile = (!args.reconcile_every.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + args.reconcile_every, args.reconcile_every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // Only while a down/delete awaits its receiver scan or a stranded receiver is followed; the
    // scan runs on a blocking thread (netlink changes are taken meanwhile).
    let mut stranded_tick = tokio::time::interval(SNAPSHOT_GAP);
    let scanner = ReceiverScanner::new(&probes)?;
    let mut scan: Option<(ReceiverScan, tokio::task::JoinHandle<Result<Vec<HungReceiver>>>)> = None;
    // Snapshots walk every socket and task of the host: under a steady stream of changes they
    // are taken at most once per SNAPSHOT_GAP, the changes in between are one batch.
    let mut last_snapshot = tokio::time::Instant::now();
    let mut snapshot_due: Option<tokio::time::Instant> = None;
    let stop = loop {
        tokio::select! {
            stop = signals.recv() => break stop,
            _ = async { match snapshot_due { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
            _ = stranded_tick.tick(), if args.receivers && scan.is_none() && pipeline.engine().wants_receiver_scan() => {
                let engine = pipeline.engine();
                let (ctx, covers) = engine.begin_receiver_scan();
                scan = Some((covers, scanner.start(ctx, engine.following_stranded())));
            }
            receivers = async { match scan.as_mut() { Some(s) => (&mut s.1).await, None => std::future::pending().await } }, if scan.is_some() => {
                let Some((covers, _)) = scan.take() else { continue };
                let receivers = receivers.context("receiver scan")??;
                let records = pipeline.engine().on_scanned_receivers(covers, &receivers, &follow::now());
                out.extend(records.into_iter().map(Out::Record));
            }
            batch = events.next_batch() => {
                pipeline.on_kernel(batch?, &mut probes, &mut out);
            }
            msg = rx.recv() => {
                let Some((ino, received)) = msg else { continue };
                // Evidence is written at syscall entry, before the kernel acts: drain it first.
                pipeline.on_kernel(events.drain(), &mut probes, &mut out);
                pipeline.on_netlink(ino, received, &mut probes, &mut out).await;
                // One snapshot per batch: everything already queued belongs to this batch.
                while let Ok((ino, received)) = rx.try_recv() {
                    pipeline.on_netlink(ino, received, &mut probes, &mut out).await;
                }
            }
            guard = mounts.ready(tokio::io::Interest::PRIORITY) => {
                let mut guard = guard.context("waiting for mount-table changes")?;
                guard.clear_ready();
                // A full scan: our own subscription sockets keep a deleted netns alive, so one
                // that left /run/netns and every process must be dropped here.
                pipeline.discover(&mut probes, true, &mut out).await;
            }
            _ = async { match reconcile.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                pipeline.discover(&mut probes, true, &mut out).await;
                pipeline.reconcile(&mut probes, &mut out).await;
            }
        }
        let now = tokio::time::Instant::now();
        if pipeline.dirty() {
            if now >= last_snapshot + SNAPSHOT_GAP {
                pipeline.snapshot(&mut probes, &mut out).await;
                last_snapshot = now;
                snapshot_due = None;
            } else {
                snapshot_due = Some(last_snapshot + SNAPSHOT_GAP);
            }
        }
        if let Ok(c) = probes.counters() {
            out.push(Out::Metric(Input::LostTotal(LostSource::Ringbuf, c.ringbuf_drops)));
        }
        sink.take(&mut out);
    };
    pipeline.on_kernel(events.drain(), &mut probes, &mut out);
    sink.take(&mut out);
    let flushed = sink.journal.flush();
    drop(pipeline);
    drop(events);
    drop(probes);
    match flushed {
        Ok(()) => crate::render::err_line(&format!("agent: {}: journal flushed to {}, probes detached", stop.name(), args.journal.display())),
        Err(e) => crate::render::err_line(&format!("agent: {}: probes detached; journal flush failed: {e}", stop.name())),
    }
    Err(Interrupted(stop).into())
}
