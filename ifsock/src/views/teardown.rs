//! `ifsock teardown IFACE`: set an interface down, observe for a grace period what the sockets
//! tied to it and the tasks using them see, then delete it.
//!
//! Seed 000: deleting an interface directly breaks sockets bound to it silently; setting it down
//! first makes senders get an error (`ip_route_output_key_hash_rcu()`: `ENETUNREACH` when the
//! bound device is not `IFF_UP`) while the interface still exists. This view shows whether that
//! happened, per socket and task, in ms after the down request.
//!
//! Evidence:
//! - send errors: `syscalls:sys_{enter,exit}_{sendto,sendmsg}` (`send_enter`/`send_exit`), the
//!   socket resolved from the fd at exit;
//! - receivers: threads already blocked before ifsock attached are found in procfs
//!   (`/proc/PID/task/TID/syscall`); later ones in `INFLIGHT_RECV`; wake-ups come as
//!   `RecvDone` events (receives in flight for at least [`RECV_REPORT_MIN_NS`]);
//! - closes: the socket inode is gone from the `iter/udp`/`iter/tcp` snapshot at the end of grace;
//! - kernel-reported errors: `sock:inet_sk_error_report` (`sk_error_report()`: an ICMP error on a
//!   connected UDP socket, a TCP reset), by socket inode (tp_btf) or matched by family, local
//!   port and address (classic tracepoint).
//!
//! Race guarded: the rtnetlink subscription is opened before the down request, so an interface
//! deleted by someone else during grace is seen (and then not deleted again).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::IsTerminal as _,
    net::IpAddr,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::{
    cli::parse_duration,
    model::tie::{self, TiedSocket},
    probes::snapshot,
    render::{
        fmt::{errno_desc, errno_name, owners},
        json_line, monotonic_ns,
    },
};
use crate::{
    kernel::{
        netlink::{self, Received, Subscription},
        netns,
        procfs,
    },
    model::{
        ids::{IfIndex, NetnsIno},
        link::{Link, Update},
        sock_error::SockError,
        socket::{Binding, Socket},
    },
    probes::{events::Event, Counters, Probes},
};

/// Receives in flight at least this long (ns) emit a `RecvDone` event when they return.
pub const RECV_REPORT_MIN_NS: u64 = 1_000_000;
/// Longest accepted grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);
/// `IFF_LOOPBACK` (include/uapi/linux/if.h).
const IFF_LOOPBACK: u32 = 0x8;

/// Options of `teardown`.
#[derive(Debug, Clone, clap::Args)]
pub struct TeardownArgs {
    /// Interface to tear down: its exact name (no patterns; `lo` is refused).
    pub iface: String,
    /// How long to observe between setting it down and deleting it (500ms, 2s, 1m).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Only report what would be affected; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// One JSON object: the report (fields documented in README.md).
    #[arg(long)]
    pub json: bool,
}

/// One netlink action ifsock took.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// When the request was sent, ms after the down request (0 for the down itself).
    pub at_ms: f64,
    /// When the kernel acknowledged it, ms after the down request.
    pub ack_ms: f64,
    /// The kernel accepted it.
    pub ok: bool,
    /// Error name and text when it did not (`ENODEV: No such device`).
    pub error: Option<String>,
}

/// Failed sends by one thread on one fd, with one errno.
#[derive(Clone, Debug, Serialize)]
pub struct SendErrorsSeen {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd the send used.
    pub fd: u32,
    /// errno (positive, from the syscall's `-errno` return).
    pub errno: i32,
    /// errno name (`ENETUNREACH`).
    pub error: String,
    /// How many sends failed this way during the observation.
    pub count: u64,
    /// First failure, ms after the down request (negative: before it).
    pub first_ms: f64,
    /// Last failure, ms after the down request.
    pub last_ms: f64,
}

/// Errors the kernel reported on one socket with one errno (`sk->sk_err` at
/// `sock:inet_sk_error_report`); the application sees each at its next call on the socket.
#[derive(Clone, Debug, Serialize)]
pub struct SockErrorsSeen {
    /// errno (positive, `sk->sk_err`).
    pub errno: i32,
    /// errno name (`ECONNREFUSED`).
    pub error: String,
    /// How many reports.
    pub count: u64,
    /// First report, ms after the down request (negative: before it).
    pub first_ms: f64,
    /// Last report, ms after the down request.
    pub last_ms: f64,
    /// Remote address:port of the socket at the first report (`0.0.0.0:0` when not connected).
    pub remote: std::net::SocketAddr,
}

/// A thread receiving on a socket, and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiverSeen {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd it receives on (None: seen only by a kernel-function probe, which knows the
    /// `struct sock` but not the fd, after the thread left the syscall).
    pub fd: Option<u32>,
    /// `read`, `recvfrom`, `recvmsg`, `recvmmsg`; `?` when unknown.
    pub syscall: String,
    /// It was blocked when the down request was sent.
    pub blocked_at_down: bool,
    /// Its receive returned during grace at this time (ms after down), when traced.
    pub woke_ms: Option<f64>,
    /// Return value of that receive (bytes, or `-errno`).
    pub ret: Option<i64>,
    /// errno name when `ret` < 0.
    pub error: Option<String>,
    /// Still (or again) blocked in a receive on this socket at the end of grace.
    pub blocked_at_end: bool,
}

/// One socket tied to the interface and what it saw.
#[derive(Clone, Debug, Serialize)]
pub struct SocketSeen {
    /// The socket and its tie, as `sockets --json` prints them.
    #[serde(flatten)]
    pub tied: TiedSocket,
    /// Failed sends.
    pub send_errors: Vec<SendErrorsSeen>,
    /// Errors the kernel reported on the socket.
    pub socket_errors: Vec<SockErrorsSeen>,
    /// Receivers.
    pub receivers: Vec<ReceiverSeen>,
    /// Its inode was gone from the socket snapshot at the end of grace (every owner closed it).
    pub closed: bool,
}

/// The report (one JSON object with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct TeardownReport {
    /// `"teardown"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Netns inode.
    pub netns: NetnsIno,
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind (`veth`, `tun`, …).
    pub kind: Option<String>,
    /// `IFF_UP` before teardown.
    pub was_up: bool,
    /// Addresses before teardown.
    pub addrs: Vec<IpAddr>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Grace period, ms.
    pub grace_ms: u64,
    /// The down request (`None` in a dry run).
    pub down: Option<Step>,
    /// The delete request (`None` in a dry run, or when the interface vanished first).
    pub delete: Option<Step>,
    /// The interface disappeared without ifsock deleting it (ms after down; 0 = before down).
    pub vanished_ms: Option<f64>,
    /// The interface is gone at the end (deleted by ifsock, or vanished).
    pub gone: bool,
    /// Sockets bound to it (device or address), and wildcard sockets that saw errors.
    pub sockets: Vec<SocketSeen>,
    /// Wildcard sockets of the netns not listed (they saw nothing).
    pub wildcard_sockets: usize,
    /// What could not be observed on this kernel, with the reason.
    pub unobserved: Vec<String>,
    /// eBPF counters (`ringbuf_drops` > 0 means events were lost).
    pub counters: Counters,
}

fn ms_since(ts_ns: u64, t0: u64) -> f64 {
    let d = ts_ns as i128 - t0 as i128;
    (d as f64 / 100_000.0).round() / 10.0
}

fn step_error(e: &anyhow::Error) -> String {
    match netlink::errno_of(e) {
        Some(errno) => errno_desc(errno),
        None => format!("{e:#}"),
    }
}

/// Finds the target by exact name and refuses what must not be torn down.
fn find_target<'a>(links: &'a [Link], name: &str) -> Result<&'a Link> {
    let link = links.iter().find(|l| l.name == name).ok_or_else(|| {
        anyhow!("unknown interface {name:?}: no such interface in this network namespace (names are exact; for another namespace use `ifsock --netns NAME teardown {name}`)")
    })?;
    if name == "lo" || link.flags & IFF_LOOPBACK != 0 {
        bail!("refusing to tear down the loopback interface {name:?}: every local socket of the namespace depends on it");
    }
    Ok(link)
}

/// Sockets tied to the link, split into listed ones (device/address) and wildcard ones.
fn tied(sockets: &[Socket], netns: NetnsIno, link: &Link, links: &[Link]) -> (Vec<TiedSocket>, Vec<TiedSocket>) {
    let addrs: Vec<IpAddr> = link.addrs.iter().copied().collect();
    tie::tied_to(sockets, netns, link.ifindex, &link.name, &addrs, links)
        .into_iter()
        .partition(|t| t.binding != Some(Binding::Wildcard))
}

/// A thread blocked in a receive on one of the interface's sockets.
#[derive(Clone, Debug)]
struct BlockedRecv {
    pid: u32,
    tid: u32,
    comm: String,
    fd: Option<u32>,
    syscall: &'static str,
    ino: u64,
}

/// Receivers blocked right now on `inodes`: procfs for threads that entered before the
/// tracepoints were attached, `INFLIGHT_RECV` for later ones (keyed by tid).
fn blocked_now(probes: &Probes, owners: &HashSet<u32>, inodes: &HashSet<u64>) -> HashMap<u32, BlockedRecv> {
    let mut out: HashMap<u32, BlockedRecv> = procfs::blocked_receivers(None)
        .into_iter()
        .filter(|b| owners.contains(&b.pid))
        .filter_map(|b| {
            let ino = b.fd_socket?.0;
            inodes.contains(&ino).then(|| {
                (b.tid, BlockedRecv { pid: b.pid, tid: b.tid, comm: b.comm, fd: Some(b.fd), syscall: procfs::syscall_name(b.syscall), ino })
            })
        })
        .collect();
    for r in probes.inflight().unwrap_or_default() {
        if inodes.contains(&r.ino.0) {
            let (syscall, fd) = recv_syscall_and_fd(&r);
            out.entry(r.tid).or_insert(BlockedRecv { pid: r.pid, tid: r.tid, comm: r.comm.clone(), fd, syscall, ino: r.ino.0 });
        }
    }
    out
}

/// The syscall and fd of a recorded receive: from the record (tracepoint set), else from the
/// thread's `/proc/.../syscall` while it is still inside it (kernel-function sets).
fn recv_syscall_and_fd(r: &crate::model::kernel_event::InFlight) -> (&'static str, Option<u32>) {
    if let Some(fd) = r.fd {
        return (r.syscall_name().unwrap_or("?"), Some(fd));
    }
    match procfs::thread_syscall(r.pid, r.tid) {
        Some((nr, fd)) if procfs::syscall_name(nr) != "?" => (procfs::syscall_name(nr), u32::try_from(fd).ok()),
        _ => ("?", None),
    }
}

/// Collects events of the observation into per-socket findings.
#[derive(Default)]
struct Observer {
    t0: u64,
    inodes: HashSet<u64>,
    /// (ino, tid, fd, errno) → findings.
    sends: BTreeMap<(u64, u32, u32, i32), SendErrorsSeen>,
    /// (ino, tid) → receivers.
    receivers: BTreeMap<(u64, u32), ReceiverSeen>,
    /// (ino, errno) → kernel-reported errors.
    sock_errors: BTreeMap<(u64, i32), SockErrorsSeen>,
    /// Every socket of the netns, to place reports that carry no inode (classic tracepoint).
    sockets: Vec<Socket>,
}

impl Observer {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::SendError(e) if self.inodes.contains(&e.ino.0) => {
                let errno = e.errno;
                let at = ms_since(e.ts_ns, self.t0);
                let entry = self.sends.entry((e.ino.0, e.tid, e.fd, errno)).or_insert_with(|| SendErrorsSeen {
                    pid: e.pid,
                    tid: e.tid,
                    comm: e.comm.clone(),
                    fd: e.fd,
                    errno,
                    error: errno_name(errno),
                    count: 0,
                    first_ms: at,
                    last_ms: at,
                });
                entry.count += 1;
                entry.first_ms = entry.first_ms.min(at);
                entry.last_ms = entry.last_ms.max(at);
            }
            Event::RecvDone(d) if self.inodes.contains(&d.entry.ino.0) => {
                let at = ms_since(d.ts_ns, self.t0);
                let r = self.receivers.entry((d.entry.ino.0, d.entry.tid)).or_insert_with(|| ReceiverSeen {
                    pid: d.entry.pid,
                    tid: d.entry.tid,
                    comm: d.entry.comm.clone(),
                    fd: d.entry.fd,
                    syscall: d.entry.syscall_name().unwrap_or("?").to_string(),
                    blocked_at_down: d.entry.since_ns < self.t0,
                    woke_ms: None,
                    ret: None,
                    error: None,
                    blocked_at_end: false,
                });
                // Keep the first wake-up after down: that is the one the teardown caused.
                if r.woke_ms.is_none() && d.ts_ns >= self.t0 {
                    r.woke_ms = Some(at);
                    r.ret = Some(d.ret);
                    r.error = (d.ret < 0).then(|| errno_name(i32::try_from(-d.ret).unwrap_or(0)));
                }
            }
            Event::SockError(e) => self.on_sock_error(&e),
            _ => {}
        }
    }

    fn on_sock_error(&mut self, e: &SockError) {
        let ino = match e.inode {
            Some(ino) => ino.0,
            None if e.netns.is_none() => e.match_socket(&self.sockets).map_or(0, |s| s.inode.0),
            None => 0,
        };
        if !self.inodes.contains(&ino) {
            return;
        }
        let at = ms_since(e.ts_ns, self.t0);
        let entry = self.sock_errors.entry((ino, e.errno)).or_insert_with(|| SockErrorsSeen {
            errno: e.errno,
            error: errno_name(e.errno),
            count: 0,
            first_ms: at,
            last_ms: at,
            remote: e.remote,
        });
        entry.count += 1;
        entry.first_ms = entry.first_ms.min(at);
        entry.last_ms = entry.last_ms.max(at);
    }

    fn sock_errors_for(&self, ino: u64) -> Vec<SockErrorsSeen> {
        self.sock_errors.iter().filter(|((i, _), _)| *i == ino).map(|(_, v)| v.clone()).collect()
    }

    fn blocked_at_down(&mut self, blocked: &HashMap<u32, BlockedRecv>) {
        for b in blocked.values() {
            self.receivers.entry((b.ino, b.tid)).or_insert_with(|| ReceiverSeen {
                pid: b.pid,
                tid: b.tid,
                comm: b.comm.clone(),
                fd: b.fd,
                syscall: b.syscall.to_string(),
                blocked_at_down: true,
                woke_ms: None,
                ret: None,
                error: None,
                blocked_at_end: false,
            });
        }
    }

    fn blocked_at_end(&mut self, blocked: &HashMap<u32, BlockedRecv>) {
        for b in blocked.values() {
            let r = self.receivers.entry((b.ino, b.tid)).or_insert_with(|| ReceiverSeen {
                pid: b.pid,
                tid: b.tid,
                comm: b.comm.clone(),
                fd: b.fd,
                syscall: b.syscall.to_string(),
                blocked_at_down: false,
                woke_ms: None,
                ret: None,
                error: None,
                blocked_at_end: true,
            });
            r.blocked_at_end = true;
        }
    }

    fn for_socket(&self, ino: u64) -> (Vec<SendErrorsSeen>, Vec<ReceiverSeen>) {
        let sends = self.sends.iter().filter(|((i, ..), _)| *i == ino).map(|(_, v)| v.clone()).collect();
        let recvs = self.receivers.iter().filter(|((i, _), _)| *i == ino).map(|(_, v)| v.clone()).collect();
        (sends, recvs)
    }
}

/// Runs `teardown`.
///
/// # Errors
/// Unknown interface, `lo`, a device the kernel cannot delete, no confirmation, probe loading
/// failures, or a down/delete request the kernel refused (the report is printed first).
pub async fn run(args: TeardownArgs) -> Result<()> {
    if args.grace > MAX_GRACE {
        bail!("--grace {:?} is longer than {}h: pick a shorter grace period", args.grace, MAX_GRACE.as_secs() / 3600);
    }
    let mut probes = Probes::load(RECV_REPORT_MIN_NS)?;
    let handle = netlink::connect()?;
    let netns = netns::current_ino()?;
    let links = netlink::dump_links(&handle).await?;
    let target = find_target(&links, &args.iface)?.clone();
    let kind = netlink::link_kind(&handle, target.ifindex).await?;
    if kind.is_none() {
        bail!(
            "refusing to tear down {:?}: it has no rtnetlink kind (a physical or driver-managed device), so the kernel cannot delete it (RTM_DELLINK fails with EOPNOTSUPP) and it would be left down; use `ip link set {} down` if that is what you want",
            target.name, target.name
        );
    }
    let grace_ms = args.grace.as_millis() as u64;
    let sockets = snapshot::sockets(&mut probes, None).context("taking the socket snapshot")?;
    let (listed, wildcard) = tied(&sockets, netns, &target, &links);
    let mut report = TeardownReport {
        ty: "teardown",
        netns,
        ifindex: target.ifindex,
        ifname: target.name.clone(),
        kind,
        was_up: target.is_up(),
        addrs: target.addrs.iter().copied().collect(),
        dry_run: args.dry_run,
        grace_ms,
        down: None,
        delete: None,
        vanished_ms: None,
        gone: false,
        sockets: Vec::new(),
        wildcard_sockets: wildcard.len(),
        unobserved: Vec::new(),
        counters: Counters::default(),
    };

    if args.dry_run {
        let owners: HashSet<u32> = listed.iter().flat_map(|t| t.socket.owners.iter().map(|o| o.pid)).collect();
        let inodes: HashSet<u64> = listed.iter().map(|t| t.socket.inode.0).collect();
        let mut obs = Observer { inodes, ..Default::default() };
        obs.blocked_at_down(&blocked_now(&probes, &owners, &obs.inodes));
        report.sockets = listed
            .into_iter()
            .map(|t| {
                let (send_errors, receivers) = obs.for_socket(t.socket.inode.0);
                SocketSeen { tied: t, send_errors, socket_errors: Vec::new(), receivers, closed: false }
            })
            .collect();
        return emit(&report, args.json);
    }

    if !args.yes {
        confirm(&report, &listed).await?;
    }

    // Attach first, then snapshot: a socket or receive that appears after the snapshot is still
    // traced, and one that existed before is in the snapshot.
    if let Err(e) = probes.attach_send_errors() {
        report.unobserved.push(format!("send errors (syscalls:sys_{{enter,exit}}_{{sendto,sendmsg}}): {e:#}"));
    }
    if let Err(e) = probes.attach_recv(None) {
        report.unobserved.push(format!("receive wake-ups (__skb_recv_udp/__skb_wait_for_more_packets or syscalls:sys_{{enter,exit}}_{{recv*,read}}): {e:#}"));
    }
    if let Err(e) = probes.attach_sock_errors() {
        report.unobserved.push(format!("kernel-reported socket errors (sock:inet_sk_error_report): {e:#}"));
    }
    let mut events = probes.events()?;
    let mut sub = Subscription::open(None)?;
    let links = netlink::dump_links(&handle).await?;
    let Some(target) = links.iter().find(|l| l.ifindex == target.ifindex && l.name == target.name).cloned() else {
        report.vanished_ms = Some(0.0);
        report.gone = true;
        return emit(&report, args.json);
    };
    let sockets = snapshot::sockets(&mut probes, None).context("taking the socket snapshot")?;
    let (listed, wildcard) = tied(&sockets, netns, &target, &links);
    report.addrs = target.addrs.iter().copied().collect();
    report.was_up = target.is_up();
    let mut all: Vec<TiedSocket> = listed;
    let listed_count = all.len();
    all.extend(wildcard);
    let owners: HashSet<u32> = all[..listed_count].iter().flat_map(|t| t.socket.owners.iter().map(|o| o.pid)).collect();
    let inodes: HashSet<u64> = all.iter().map(|t| t.socket.inode.0).filter(|&i| i != 0).collect();
    let listed_inodes: HashSet<u64> = all[..listed_count].iter().map(|t| t.socket.inode.0).collect();
    let mut obs = Observer { inodes, sockets: sockets.clone(), ..Default::default() };
    let blocked_before = blocked_now(&probes, &owners, &listed_inodes);

    obs.t0 = monotonic_ns();
    let deadline = tokio::time::Instant::now().checked_add(args.grace).unwrap_or_else(tokio::time::Instant::now);
    let down = netlink::set_down(&handle, target.ifindex).await;
    let ack = monotonic_ns();
    obs.blocked_at_down(&blocked_before);
    let mut failure = None;
    report.down = Some(Step {
        at_ms: 0.0,
        ack_ms: ms_since(ack, obs.t0),
        ok: down.is_ok(),
        error: down.as_ref().err().map(step_error),
    });
    if let Err(e) = down {
        if netlink::errno_of(&e) == Some(libc::ENODEV) {
            report.vanished_ms = Some(0.0);
        } else {
            failure = Some(e.context(format!("setting {} down (RTM_NEWLINK ifi_change=IFF_UP)", target.name)));
        }
    }

    if report.vanished_ms.is_none() && failure.is_none() {
        let mut subscribed = true;
        // Someone else deleted it: the grace period protects nothing any more.
        while report.vanished_ms.is_none() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                batch = events.next_batch() => {
                    for ev in batch? { obs.on_event(ev); }
                }
                received = sub.recv(), if subscribed => match received {
                    Ok(Received::Updates(updates)) => {
                        let gone = updates.iter().any(|u| matches!(u, Update::DelLink { ifindex, .. } if *ifindex == target.ifindex));
                        if gone {
                            report.vanished_ms = Some(ms_since(monotonic_ns(), obs.t0));
                        }
                    }
                    Ok(Received::Overrun) => {
                        // Notifications were lost: ask the kernel directly.
                        let now = netlink::dump_links(&handle).await?;
                        if !now.iter().any(|l| l.ifindex == target.ifindex) {
                            report.vanished_ms = Some(ms_since(monotonic_ns(), obs.t0));
                        }
                    }
                    Err(e) => {
                        subscribed = false;
                        tracing::warn!("rtnetlink subscription failed, deletion by others is checked at the end only: {e:#}");
                    }
                },
            }
        }
        for ev in events.drain() {
            obs.on_event(ev);
        }
    }

    obs.blocked_at_end(&blocked_now(&probes, &owners, &listed_inodes));
    let end = snapshot::sockets(&mut probes, None).context("taking the end-of-grace socket snapshot")?;
    let alive: HashSet<u64> = end.iter().map(|s| s.inode.0).collect();

    if report.vanished_ms.is_none() && failure.is_none() {
        let now = netlink::dump_links(&handle).await?;
        if now.iter().any(|l| l.ifindex == target.ifindex && l.name == target.name) {
            let at = monotonic_ns();
            let del = netlink::delete(&handle, target.ifindex).await;
            let done = monotonic_ns();
            report.delete = Some(Step {
                at_ms: ms_since(at, obs.t0),
                ack_ms: ms_since(done, obs.t0),
                ok: del.is_ok(),
                error: del.as_ref().err().map(step_error),
            });
            match del {
                Ok(()) => report.gone = true,
                Err(e) if netlink::errno_of(&e) == Some(libc::ENODEV) => report.vanished_ms = Some(ms_since(at, obs.t0)),
                Err(e) => failure = Some(e.context(format!("deleting {} (RTM_DELLINK); it is left down", target.name))),
            }
        } else {
            report.vanished_ms = Some(ms_since(monotonic_ns(), obs.t0));
        }
    }
    if report.vanished_ms.is_some() {
        report.gone = true;
    }

    report.sockets = all
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let (send_errors, receivers) = obs.for_socket(t.socket.inode.0);
            let socket_errors = obs.sock_errors_for(t.socket.inode.0);
            if i >= listed_count && send_errors.is_empty() && socket_errors.is_empty() {
                return None;
            }
            let closed = t.socket.inode.0 != 0 && !alive.contains(&t.socket.inode.0);
            Some(SocketSeen { tied: t, send_errors, socket_errors, receivers, closed })
        })
        .collect();
    report.wildcard_sockets = report.wildcard_sockets.saturating_sub(report.sockets.len() - listed_count);
    match probes.counters() {
        Ok(c) => report.counters = c,
        Err(e) => report.unobserved.push(format!("eBPF counters unavailable, lost events cannot be ruled out: {e:#}")),
    }
    if report.counters.ringbuf_drops > 0 {
        report.unobserved.push(format!("{} events lost to a full ring buffer", report.counters.ringbuf_drops));
    }
    emit(&report, args.json)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Asks on the terminal; refuses without one.
async fn confirm(report: &TeardownReport, listed: &[TiedSocket]) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to tear down {:?} without confirmation: stdin is not a terminal; pass --yes to confirm, or --dry-run to see what would be affected",
            report.ifname
        );
    }
    eprintln!(
        "about to set {} (ifindex {}, netns {}) down, observe for {}ms, then delete it; {} socket(s) tied to it:",
        report.ifname,
        report.ifindex,
        report.netns,
        report.grace_ms,
        listed.len()
    );
    for t in listed {
        eprintln!("  {}", socket_line(t));
    }
    eprint!("proceed? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the confirmation")?
    .context("reading the confirmation from stdin")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        bail!("not confirmed: {} left untouched", report.ifname);
    }
    Ok(())
}

fn socket_line(t: &TiedSocket) -> String {
    let s = &t.socket;
    format!(
        "{}{} {} {}:{} inode {}{} {}",
        format!("{:?}", s.protocol).to_lowercase(),
        s.family,
        crate::render::fmt::binding(t.binding),
        s.local_addr,
        s.local_port,
        s.inode,
        if s.pktinfo { " pktinfo" } else { "" },
        owners(&s.owners, "no owner")
    )
}

fn fmt_ms(ms: f64) -> String {
    if ms < 0.0 {
        format!("{ms:.1}ms (before down)")
    } else {
        format!("+{ms:.1}ms")
    }
}

fn emit(r: &TeardownReport, json: bool) -> Result<()> {
    if json {
        return json_line(r);
    }
    let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
    println!(
        "{}{} (ifindex {}, kind {}, netns {}): was {}, addresses {}",
        if r.dry_run { "dry run: would tear down " } else { "teardown " },
        r.ifname,
        r.ifindex,
        r.kind.as_deref().unwrap_or("-"),
        r.netns,
        if r.was_up { "up" } else { "down" },
        if addrs.is_empty() { "none".into() } else { addrs.join(", ") }
    );
    if let Some(d) = &r.down {
        match &d.error {
            None => println!("  {:<11} set down (acknowledged {})", "+0.0ms", fmt_ms(d.ack_ms)),
            Some(e) => println!("  {:<11} set down FAILED: {e}", "+0.0ms"),
        }
    }
    if let Some(v) = r.vanished_ms {
        println!("  {:<11} interface vanished (not deleted by ifsock)", fmt_ms(v));
    }
    if let Some(d) = &r.delete {
        match &d.error {
            None => println!("  {:<11} deleted after {}ms grace", fmt_ms(d.at_ms), r.grace_ms),
            Some(e) => println!("  {:<11} delete FAILED: {e}", fmt_ms(d.at_ms)),
        }
    }
    let verb = if r.dry_run { "would be affected" } else { "tied to it" };
    println!("{} socket(s) {verb}; {} wildcard socket(s) not listed", r.sockets.len(), r.wildcard_sockets);
    for s in &r.sockets {
        println!("  {}{}", socket_line(&s.tied), if s.closed { " — closed by its owner(s) during grace" } else { "" });
        for e in &s.send_errors {
            println!(
                "    {}[{}] tid {} fd {}: send failed {} ×{}, first {}, last {}",
                e.comm, e.pid, e.tid, e.fd, e.error, e.count, fmt_ms(e.first_ms), fmt_ms(e.last_ms)
            );
        }
        for e in &s.socket_errors {
            println!(
                "    kernel reported {} ×{} (sk_err, remote {}), first {}, last {}",
                e.error, e.count, e.remote, fmt_ms(e.first_ms), fmt_ms(e.last_ms)
            );
        }
        for rc in &s.receivers {
            let fate = match (rc.woke_ms, rc.blocked_at_end) {
                _ if r.dry_run => "blocked in it now".to_string(),
                (Some(w), again) => format!(
                    "woke {} with {}{}",
                    fmt_ms(w),
                    rc.error.clone().unwrap_or_else(|| format!("{} bytes", rc.ret.unwrap_or(0))),
                    if again { ", blocked again at end" } else { "" }
                ),
                (None, true) => format!("still blocked after {}ms: nothing woke it", r.grace_ms),
                (None, false) => "returned during grace (entered before ifsock attached: time not traced)".to_string(),
            };
            let when = if r.dry_run {
                ""
            } else if rc.blocked_at_down {
                " blocked at down"
            } else {
                " entered after down"
            };
            println!("    {}[{}] tid {} fd {}: {}{when} — {fate}", rc.comm, rc.pid, rc.tid, rc.fd.map_or("?".into(), |f| f.to_string()), rc.syscall);
        }
        if !r.dry_run && s.send_errors.is_empty() && s.socket_errors.is_empty() && s.receivers.is_empty() && !s.closed {
            println!("    nothing observed: no failed send, no receiver, not closed");
        }
    }
    for u in &r.unobserved {
        println!("not observed: {u}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn link(i: u32, name: &str, flags: u32) -> Link {
        Link { ifindex: IfIndex(i), name: name.into(), flags, addrs: BTreeSet::new() }
    }

    #[test]
    fn targets_are_exact_names_and_loopback_is_refused() {
        let links = [link(1, "lo", 0x9), link(5, "veth0", 0x1), link(6, "lo2", 0x8)];
        assert_eq!(find_target(&links, "veth0").unwrap().ifindex, IfIndex(5));
        assert!(find_target(&links, "veth").unwrap_err().to_string().contains("unknown interface \"veth\""));
        assert!(find_target(&links, "veth*").is_err());
        assert!(find_target(&links, "lo").unwrap_err().to_string().contains("loopback"));
        assert!(find_target(&links, "lo2").unwrap_err().to_string().contains("loopback"), "IFF_LOOPBACK under another name");
    }

    #[test]
    fn send_errors_aggregate_per_thread_fd_and_errno() {
        let mut obs = Observer { t0: 1_000_000_000, inodes: [42].into_iter().collect(), ..Default::default() };
        let ev = |ts_ns: u64, ret: i64, ino: u64| {
            let mut comm = [0u8; 16];
            comm[..3].copy_from_slice(b"app");
            Event::SendError(crate::model::kernel_event::SendError::from_record(&ifsock_common::SendErrorEvent {
                kind: ifsock_common::EventKind::SendError as u32, pid: 7, ts_ns, ret, ino, tid: 8, fd: 3, comm,
            }))
        };
        obs.on_event(ev(1_000_600_000, -(libc::ENETUNREACH as i64), 42));
        obs.on_event(ev(1_900_000_000, -(libc::ENETUNREACH as i64), 42));
        obs.on_event(ev(1_950_000_000, -(libc::ENODEV as i64), 42));
        obs.on_event(ev(1_950_000_000, -(libc::ENODEV as i64), 43));
        let (sends, recvs) = obs.for_socket(42);
        assert!(recvs.is_empty());
        assert_eq!(sends.len(), 2);
        let unreach = sends.iter().find(|s| s.errno == libc::ENETUNREACH).unwrap();
        assert_eq!((unreach.error.as_str(), unreach.count, unreach.first_ms, unreach.last_ms), ("ENETUNREACH", 2, 0.6, 900.0));
        assert!(obs.for_socket(43).0.is_empty(), "socket not tied to the interface");
        assert_eq!(ms_since(999_000_000, 1_000_000_000), -1.0);
    }

    #[test]
    fn kernel_reported_errors_aggregate_per_socket_and_errno_and_classic_reports_match_by_address() {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&[10, 9, 0, 1]);
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&[10, 9, 0, 2]);
        let tied = Socket::from_record(&ifsock_common::SockRecord {
            sk: 1, cookie: 1, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 1, lport: 5000, rport: 9,
            flags: 0, laddr: l, raddr: r, rx_queue: 0, drops: 0,
        });
        let mut obs = Observer { t0: 1_000_000_000, inodes: [42].into_iter().collect(), sockets: vec![tied], ..Default::default() };
        let ev = |ts_ns: u64, error: i32, ino: u64, via: u32| {
            Event::SockError(SockError::from_event(&ifsock_common::SockErrorEvent {
                kind: ifsock_common::EventKind::SockError as u32, error, ts_ns, sk: 0, ino, netns: if ino == 0 { 0 } else { 7 },
                bound_dev_if: 0, family: 2, protocol: 17, lport: 5000, rport: 9, laddr: l, raddr: r, pid: 0, tid: 0, comm: [0; 16], via, _pad: 0,
            }))
        };
        obs.on_event(ev(990_000_000, libc::ECONNREFUSED, 42, ifsock_common::sock_error_via::TP_BTF));
        obs.on_event(ev(1_200_000_000, libc::ECONNREFUSED, 0, ifsock_common::sock_error_via::TRACEPOINT));
        obs.on_event(ev(1_300_000_000, libc::ECONNREFUSED, 43, ifsock_common::sock_error_via::TP_BTF));
        let seen = obs.sock_errors_for(42);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].error.as_str(), seen[0].count, seen[0].first_ms, seen[0].last_ms), ("ECONNREFUSED", 2, -10.0, 200.0));
        assert_eq!(seen[0].remote.to_string(), "10.9.0.2:9");
        assert!(obs.sock_errors_for(43).is_empty(), "socket not tied to the interface");
    }
}
