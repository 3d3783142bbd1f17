//! `ifsock hung`: tasks blocked receiving on a socket, for how long, on which socket and
//! interface — even when the socket's fd was already closed (seed 003).
//!
//! Args → probes (in-flight records), procfs and snapshots → [`engine::receivers`] →
//! [`render::hung`]. The evidence rules (exact, current_fd, inferred…) are the engine's.
//! Event loops (epoll, poll, select) waiting on stranded sockets come from socket health and
//! the waiter pass ([`engine::health::event_loop_waiters`](crate::engine::health::event_loop_waiters)),
//! listed apart from the receivers.
use std::{collections::HashSet, time::Duration};

use anyhow::{bail, Result};

pub use crate::engine::receivers::Context;
use crate::{
    cli::{parse_bounded_duration, parse_positive_duration},
    engine::{
        health::{event_loop_waiters, EventLoopWaiter},
        receivers::{self as engine, Filter, Inputs, NetnsFilter},
    },
    kernel::{
        netlink::{self, Received, Subscription},
        netns::{self, NetnsHandle},
        procfs::{self, BlockedThread, Procfs},
        signals::Signals,
        waiters::WaiterIndex,
    },
    model::{
        ids::NetnsIno,
        link::{ChangeKind, LinkTable, Update},
        receiver::InFlight,
        socket::Socket,
        stranded::health,
        tie,
    },
    probes::{plan, select::ProbeSet, snapshot, Probes},
    render::{self, hung::Style, monotonic_ns},
};
pub use crate::model::receiver::{tie_strands, Certainty, HungReceiver, IfaceState, IfaceTie};

/// Default `--interval` with `--follow`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Options of `hung`.
#[derive(Debug, Clone, clap::Args)]
pub struct HungArgs {
    /// Only receivers blocked at least this long (0 to 24h).
    #[arg(long, default_value = "1s", value_parser = parse_bounded_duration)]
    pub min_blocked: Duration,
    /// Only this process (a pid that exists).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Every network namespace, with a NETNS column (JSON: `netns`). Without it, only receivers
    /// of the netns ifsock runs in (`--netns`): by their socket's netns, or by the thread's
    /// netns when the socket is unknown.
    #[arg(long)]
    pub all_netns: bool,
    /// JSON: one object per receiver (one-shot), or one `snapshot` object per interval (`--follow`).
    #[arg(long)]
    pub json: bool,
    /// Keep running: record receives as they start (exact sockets) and interface deletions,
    /// and print the list every `--interval`.
    #[arg(long)]
    pub follow: bool,
    /// Interval between snapshots with `--follow` (1ms to 24h; default 1s).
    #[arg(long, requires = "follow", value_parser = parse_positive_duration)]
    pub interval: Option<Duration>,
    /// Receive-path probe set instead of the best one allowed (fentry: `__skb_recv_udp`,
    /// `__skb_recv_datagram`, `__skb_wait_for_more_packets` trampolines; kprobe: the same with
    /// kprobes; tracepoint: the receive syscalls). Refused with the kernel's reason if unavailable.
    /// Only with `--follow`: a one-shot scan reads procfs and records nothing.
    #[arg(long, value_enum, requires = "follow")]
    pub probe_set: Option<ProbeSet>,
    /// Journal of a recorder that was running before (`ifsock agent`): interfaces it saw
    /// deleted name the interface a wildcard IP_PKTINFO receiver was stranded by. Default: the
    /// agent's directory, when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}

/// The journal to consult: `--journal DIR` (which must exist), else the agent's default
/// directory when it exists, else none.
fn journal_dir(arg: Option<&std::path::Path>) -> Result<Option<std::path::PathBuf>> {
    match arg {
        Some(d) if !d.is_dir() => bail!("--journal {}: no such directory (the agent writes it; see `ifsock agent --help`)", d.display()),
        Some(d) => Ok(Some(d.to_path_buf())),
        None => Ok(Some(std::path::PathBuf::from(crate::journal::DEFAULT_DIR)).filter(|d| d.is_dir())),
    }
}

/// Marks receivers stranded by deletions a running recorder journaled since they began.
fn consult_journal(rows: &mut [HungReceiver], dir: &std::path::Path) -> Result<()> {
    let now = crate::render::unix_ns();
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

/// In-flight records (decoded) and the sockets of the caller's netns plus those of every other
/// netns a receiving thread is in, when `filter` can need them.
fn gather(
    probes: &mut Probes,
    filter: &Filter,
    blocked: &[BlockedThread],
    inflight: Vec<InFlight>,
) -> Result<(Vec<InFlight>, Vec<Socket>, Vec<netns::NetnsHandle>)> {
    let own = netns::current_ino()?;
    let mut sockets = snapshot::sockets(probes, None)?;
    let known: HashSet<_> = sockets.iter().map(|s| s.inode).collect();
    let foreign_needed = engine::needs_foreign_sockets(filter, own, &inflight, blocked, &known);
    let mut handles = Vec::new();
    if foreign_needed {
        let others = engine::namespaces_to_scan(&inflight, blocked, own);
        if !others.is_empty() {
            for h in netns::all().into_iter().filter(|h| others.contains(&h.ino)) {
                sockets.extend(snapshot::sockets(probes, Some(&h))?);
                handles.push(h);
            }
        }
    }
    Ok((inflight, sockets, handles))
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
            let (records, sockets, _) = gather(probes, &filter, &blocked, records)?;
            let input = Inputs { inflight: &records, blocked: &blocked, sockets: &sockets, ctx: &ctx, now_ns: monotonic_ns() };
            Ok(engine::receivers(&input, &filter, &Procfs))
        })
    }
}

/// One `hung` scan; with `--all-netns` the links of the other namespaces are dumped too, so
/// that their receivers get interface ties.
async fn scan(probes: &mut Probes, ctx: &Context, filter: &Filter) -> Result<Vec<HungReceiver>> {
    let blocked = procfs::blocked_receivers(filter.pid);
    let inflight = probes.inflight()?;
    let (inflight, sockets, handles) = gather(probes, filter, &blocked, inflight)?;
    let mut ctx = ctx.clone();
    if filter.netns == NetnsFilter::All {
        for h in &handles {
            // A namespace that vanished since its socket snapshot has no links to tie to.
            if let Ok(links) = snapshot::links(Some(h)).await {
                ctx.links.entry(h.ino).or_insert(links);
            }
        }
    }
    let input = Inputs { inflight: &inflight, blocked: &blocked, sockets: &sockets, ctx: &ctx, now_ns: monotonic_ns() };
    Ok(engine::receivers(&input, filter, &Procfs))
}

/// Event-loop threads waiting on a stranded socket, by the netns rules of the receivers: the
/// sockets of the netns ifsock runs in, or of every netns with `--all-netns` (a netns that
/// vanishes meanwhile is skipped); only `filter.pid`'s when set. `--min-blocked` does not apply:
/// procfs gives no start time for an epoll/poll/select wait. The waiter pass over `/proc` is
/// taken only when some socket is stranded.
///
/// # Errors
/// Snapshot or netlink failures in the netns ifsock runs in.
async fn event_loops(probes: &mut Probes, filter: &Filter, own: NetnsIno) -> Result<Vec<EventLoopWaiter>> {
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
    let index = WaiterIndex::discover();
    let reports: Vec<_> = stranded.into_iter().map(|(tied, h)| index.report(tied, Some(h))).collect();
    let mut rows = event_loop_waiters(&reports);
    if let Some(pid) = filter.pid {
        rows.retain(|r| r.waiter.pid == pid);
    }
    Ok(rows)
}

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
    let forced = plan::Forced { probe_set: args.probe_set, sock_error_probe: None };
    let selection = probes.apply(&plan::HUNG, forced)?.recv.ok_or_else(|| anyhow::anyhow!("hung: receive probes reported attached without a selection"))?;
    let mut signals = Signals::new()?;
    // Subscribe before dumping so that no deletion falls between the two.
    let mut sub = Subscription::open(None)?;
    let handle = netlink::connect()?;
    let mut table = LinkTable::from_links(netlink::dump_links(&handle).await?);
    let attached: Vec<String> = probes.attached.iter().map(ToString::to_string).collect();
    render::hung::ready(args.json, own, &selection, &attached)?;
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
