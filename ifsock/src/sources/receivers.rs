//! Receiver scans: the /proc pass, the sockets' wait queues (the waiter walk), the in-flight map
//! (only with `--record-receives`) and socket snapshots, handed to
//! [`engine::receivers`] — for `hung` (one scan per run or per `--follow` interval) and, on a
//! blocking thread, for `watch` and the agent ([`ReceiverScanner`]); plus the event-loop
//! waiters of stranded sockets and the agent's journal of deletions, which `hung` consults.
use std::collections::HashSet;

use anyhow::{bail, Result};

use crate::{
    engine::{
        health::{event_loop_waiters, EventLoopWaiter},
        receivers::{self as engine, Context, Filter, Inputs, NetnsFilter},
    },
    kernel::{
        clock::monotonic_ns,
        netlink,
        netns::{self, NetnsHandle},
        procfs::{self, BlockedThread, Procfs},
        waiters::WaiterIndex,
    },
    model::{
        ids::NetnsIno,
        receiver::{HungReceiver, InFlight, QueuedReceiver, QUEUED_RECEIVE_SYSCALLS},
        stranded::{Via, WaiterSource},
        socket::Socket,
        stranded::health,
        tie,
    },
    probes::{snapshot, Probes},
};

/// The journal to consult: `--journal DIR` (which must exist), else the agent's default
/// directory when it exists, else none.
pub fn journal_dir(arg: Option<&std::path::Path>) -> Result<Option<std::path::PathBuf>> {
    match arg {
        Some(d) if !d.is_dir() => bail!("--journal {}: no such directory (the agent writes it; see `ifsock agent --help`)", d.display()),
        Some(d) => Ok(Some(d.to_path_buf())),
        None => Ok(Some(std::path::PathBuf::from(crate::journal::DEFAULT_DIR)).filter(|d| d.is_dir())),
    }
}

/// Marks receivers stranded by deletions a running recorder journaled since they began.
pub fn consult_journal(rows: &mut [HungReceiver], dir: &std::path::Path) -> Result<()> {
    let now = crate::kernel::clock::unix_ns();
    let mut deletions = Vec::new();
    let spaces: HashSet<NetnsIno> = rows.iter().filter_map(|r| r.socket.as_ref().map(|s| s.netns)).collect();
    let since = now.saturating_sub(rows.iter().filter_map(|r| r.blocked_ns).max().unwrap_or(0)).saturating_sub(engine::ESTIMATED_START_SLACK_NS);
    for netns in spaces {
        let found = crate::journal::deletions_since(dir, netns, since).map_err(|e| anyhow::anyhow!("reading the journal {}: {e}", dir.display()))?;
        deletions.extend(found.into_iter().map(|d| engine::RecordedDeletion { netns, ifindex: d.ifindex, ifname: d.ifname, ts_unix_ns: d.ts_unix_ns }));
    }
    engine::mark_recorded_deletions(rows, &deletions, now, &dir.display().to_string());
    Ok(())
}

/// What one scan read besides procfs: the in-flight records (decoded), the sockets of the
/// caller's netns plus those of every other netns a receiving thread is in (when `filter` can
/// need them), those namespaces' handles, and the receivers on their sockets' wait queues.
struct Gathered {
    inflight: Vec<InFlight>,
    sockets: Vec<Socket>,
    handles: Vec<NetnsHandle>,
    queued: Vec<QueuedReceiver>,
    /// The wait queues of every namespace read were walked (false: the `/proc` fallback).
    walked: bool,
}

/// `also`: namespaces whose sockets are read whatever the threads say (teardown's companions:
/// a socket of another netns can have receivers in this one).
fn gather(probes: &mut Probes, filter: &Filter, blocked: &[BlockedThread], inflight: Vec<InFlight>, also: &[NetnsIno]) -> Result<Gathered> {
    let own = netns::current_ino()?;
    let mut sockets = snapshot::sockets(probes, None)?;
    let known: HashSet<_> = sockets.iter().map(|s| s.inode).collect();
    let foreign_needed = engine::needs_foreign_sockets(filter, own, &inflight, blocked, &known) || also.iter().any(|n| *n != own);
    let mut handles = Vec::new();
    if foreign_needed {
        let mut others = engine::namespaces_to_scan(&inflight, blocked, own);
        others.extend(also.iter().copied().filter(|n| *n != own));
        others.sort();
        others.dedup();
        if !others.is_empty() {
            for h in netns::all().into_iter().filter(|h| others.contains(&h.ino)) {
                sockets.extend(snapshot::sockets(probes, Some(&h))?);
                handles.push(h);
            }
        }
    }
    // After the procfs pass: a thread procfs saw asleep in a receive is on its socket's queue
    // already (it queues itself before it sleeps), so the walk cannot miss it. With no thread
    // in a receive, an accept or a read of a closed fd, the walk would list nobody: skipped
    // (its programs' verification is most of an idle `hung`), and it counts as walked.
    if blocked.is_empty() && inflight.is_empty() && !procfs::unlisted_socket_wait() {
        return Ok(Gathered { inflight, sockets, handles, queued: Vec::new(), walked: true });
    }
    let (queued, walked) = match super::waiters::walk_only(probes, std::iter::once(None).chain(handles.iter().map(Some))) {
        Ok(index) => (queued_receivers(&index, &sockets, blocked), true),
        Err(reason) => {
            tracing::debug!("receivers from /proc only (no wait-queue walk): {reason}");
            (Vec::new(), false)
        }
    };
    Ok(Gathered { inflight, sockets, handles, queued, walked })
}

/// The receivers (and acceptors) on the wait queues of `sockets`, with the fd each passed to
/// its syscall and a blocked-time estimate: procfs's when it listed the thread, else the
/// thread's own scheduler clock (an `accept`, which procfs's receive pass does not list).
fn queued_receivers(index: &WaiterIndex, sockets: &[Socket], blocked: &[BlockedThread]) -> Vec<QueuedReceiver> {
    let listed: HashSet<u32> = blocked.iter().map(|b| b.tid).collect();
    let mut out = Vec::new();
    for s in sockets {
        for w in receivers_on(index, s) {
            let blocked_ns = if listed.contains(&w.tid) { None } else { procfs::sched_blocked_ns(w.pid, w.tid) };
            out.push(QueuedReceiver { pid: w.pid, tid: w.tid, comm: w.comm, syscall: w.syscall, fd: index.passed_fd(s.inode, w.tid), ino: s.inode, netns: s.netns, blocked_ns });
        }
    }
    out
}

/// The receivers (and acceptors) on `socket`'s wait queue in `index`: its wait-queue waiters
/// with a thread, woken as a receive (`via: recv`), asleep in a receive or accept syscall
/// ([`QUEUED_RECEIVE_SYSCALLS`]). `hung`'s receivers and the agent's blocked-receiver gauge.
pub fn receivers_on(index: &WaiterIndex, socket: &Socket) -> impl Iterator<Item = crate::model::stranded::Waiter> {
    index
        .for_socket(socket)
        .into_iter()
        .filter(|w| w.source == WaiterSource::WaitQueue && w.via == Via::Recv && w.tid != 0 && QUEUED_RECEIVE_SYSCALLS.contains(&w.syscall))
}

/// Receiver scans for `watch` and the agent, each on a blocking thread so that the event loop
/// prints netlink changes while it runs (a scan takes socket snapshots: ~20 ms at 10k sockets).
/// The order is that of `hung`: the /proc pass, then the in-flight map (read through its own
/// fd), then the sockets, through an iterator-only [`Probes`] of the scanner's own, loaded on
/// the first scan that needs sockets (the event loop's `Probes` stays with the event loop).
pub struct ReceiverScanner {
    inflight: std::sync::Arc<crate::probes::InflightReader>,
    probes: std::sync::Arc<std::sync::Mutex<Option<Probes>>>,
}

impl ReceiverScanner {
    /// A scanner reading `probes`' in-flight map.
    ///
    /// # Errors
    /// As [`Probes::inflight_reader`].
    pub fn new(probes: &Probes) -> Result<Self> {
        Ok(Self { inflight: std::sync::Arc::new(probes.inflight_reader()?), probes: Default::default() })
    }

    /// Starts one scan of every blocked receiver of any netns, ties judged by `ctx`. With
    /// nothing in a receive (no in-flight record, no blocked thread) and `following` false
    /// (no stranded receiver to see wake), no socket is read and the scan is empty.
    pub fn start(&self, ctx: Context, following: bool) -> tokio::task::JoinHandle<Result<Vec<HungReceiver>>> {
        let (inflight, probes) = (self.inflight.clone(), self.probes.clone());
        tokio::task::spawn_blocking(move || {
            let blocked = procfs::blocked_receivers(None);
            let records = inflight.read()?;
            if !following && blocked.is_empty() && records.is_empty() {
                return Ok(Vec::new());
            }
            let mut slot = probes.lock().map_err(|_| anyhow::anyhow!("an earlier receiver scan panicked"))?;
            if slot.is_none() {
                *slot = Some(Probes::load_for_snapshots()?);
            }
            let probes = slot.as_mut().ok_or_else(|| anyhow::anyhow!("scanner probes not loaded"))?;
            let filter = Filter { min_blocked_ns: 0, pid: None, netns: NetnsFilter::All };
            let g = gather(probes, &filter, &blocked, records, &[])?;
            let input = Inputs { queued: &g.queued, walked: g.walked, inflight: &g.inflight, blocked: &blocked, sockets: &g.sockets, ctx: &ctx, now_ns: monotonic_ns() };
            Ok(engine::receivers(&input, &filter, &Procfs))
        })
    }
}

/// One `hung` scan; with `--all-netns` the links of the other namespaces are dumped too, so
/// that their receivers get interface ties.
pub async fn scan(probes: &mut Probes, ctx: &Context, filter: &Filter) -> Result<Vec<HungReceiver>> {
    let blocked = procfs::blocked_receivers(filter.pid);
    let inflight = probes.inflight()?;
    let g = gather(probes, filter, &blocked, inflight, &[])?;
    let mut ctx = ctx.clone();
    if filter.netns == NetnsFilter::All {
        for h in &g.handles {
            // A namespace that vanished since its socket snapshot has no links to tie to.
            if let Ok(links) = snapshot::links(Some(h)).await {
                ctx.links.entry(h.ino).or_insert(links);
            }
        }
    }
    let input = Inputs { queued: &g.queued, walked: g.walked, inflight: &g.inflight, blocked: &blocked, sockets: &g.sockets, ctx: &ctx, now_ns: monotonic_ns() };
    Ok(engine::receivers(&input, filter, &Procfs))
}

/// Every receiver blocked now on one of the sockets `wanted` (inodes; those of the namespaces
/// `spaces` are read whoever holds them), by the
/// scan of `hung --all-netns` (the wait queues, with the `/proc` pass as the fallback, and the
/// in-flight map when the receive probes are attached) with no interface ties: `teardown`'s
/// receivers, which sees one whose fd is closed because the thread is on its socket's queue.
///
/// # Errors
/// The in-flight map or a socket snapshot could not be read.
pub fn blocked_on(probes: &mut Probes, wanted: &HashSet<u64>, spaces: &[NetnsIno]) -> Result<Vec<HungReceiver>> {
    let blocked = procfs::blocked_receivers(None);
    let inflight = probes.inflight()?;
    let g = gather(probes, &Filter::ALL, &blocked, inflight, spaces)?;
    let ctx = Context::default();
    let input = Inputs { queued: &g.queued, walked: g.walked, inflight: &g.inflight, blocked: &blocked, sockets: &g.sockets, ctx: &ctx, now_ns: monotonic_ns() };
    let mut rows = engine::receivers(&input, &Filter::ALL, &Procfs);
    rows.retain(|r| r.socket.as_ref().is_some_and(|s| wanted.contains(&s.inode.0)));
    Ok(rows)
}

/// Event-loop threads waiting on a stranded socket, by the netns rules of the receivers: the
/// sockets of the netns ifsock runs in, or of every netns with `--all-netns` (a netns that
/// vanishes meanwhile is skipped); only `filter.pid`'s when set. `--min-blocked` does not apply:
/// procfs gives no start time for an epoll/poll/select wait. The waiter pass over `/proc` is
/// taken only when some socket is stranded.
///
/// # Errors
/// Snapshot or netlink failures in the netns ifsock runs in.
pub async fn event_loops(probes: &mut Probes, filter: &Filter, own: NetnsIno) -> Result<Vec<EventLoopWaiter>> {
    let spaces: Vec<Option<NetnsHandle>> = match filter.netns {
        NetnsFilter::All => netns::all().into_iter().map(Some).collect(),
        NetnsFilter::Only(_) => vec![None],
    };
    let mut stranded = Vec::new();
    for ns in &spaces {
        let ino = ns.as_ref().map_or(own, |h| h.ino);
        // Sockets before links, as in `sockets`: a bind that raced an address going away is
        // judged against the later dump.
        let read = async {
            let sockets = snapshot::sockets(probes, ns.as_ref())?;
            let (links, addrs) = netlink::dump_links_and_addrs(&netlink::connect_in(ns.as_ref())?).await?;
            anyhow::Ok((sockets, links, addrs))
        };
        let (sockets, links, addrs) = match read.await {
            Ok(r) => r,
            Err(e) if ns.is_some() => {
                tracing::debug!("netns {ino} skipped for event loops: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        for tied in tie::each_once(&sockets, ino, &links) {
            if let Some(h) = health(&tied.socket, &links, &addrs, &[]) {
                stranded.push((tied, h));
            }
        }
    }
    if stranded.is_empty() {
        return Ok(Vec::new());
    }
    // The sockets' wait queues (the `/proc` pass where they cannot be read, see
    // `sources::waiters`). Entries with no thread (an idle epoll instance, an io_uring poll
    // entry) name no event loop.
    let index = super::waiters::index(probes, spaces.iter().map(Option::as_ref));
    let reports: Vec<_> = stranded.into_iter().map(|(tied, h)| index.report(tied, Some(h))).collect();
    let mut rows = event_loop_waiters(&reports);
    rows.retain(|r| r.waiter.tid != 0);
    if let Some(pid) = filter.pid {
        rows.retain(|r| r.waiter.pid == pid);
    }
    Ok(rows)
}
