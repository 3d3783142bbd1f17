//! `ifsock hung`: tasks blocked receiving on a socket, for how long, on which socket and
//! interface — even when the socket's fd was already closed (seed 003).
//!
//! Evidence, strongest first: a probe records the socket when the receive starts (the `struct
//! sock *` argument of `__skb_recv_udp`/`__skb_recv_datagram`/`__skb_wait_for_more_packets`,
//! or the fd resolved at syscall entry on the tracepoint set)
//! (`exact`); a still-open fd that points at a socket (`current_fd`, from procfs); the only
//! ownerless socket in the task's netns (`inferred`). An inference is never shown as a fact.
use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Result;
use crate::model::kernel_event::{ProbeVia, RecvEntry};
use serde::Serialize;

use crate::{
    cli::parse_duration,
    probes::snapshot,
    render::{human_ns, json_line, monotonic_ns, table},
};
use crate::{
    kernel::{
        netlink::{self, Received, Subscription},
        netns,
        procfs::{self, syscall_name},
    },
    model::{
        ids::{IfIndex, NetnsIno, SockInode},
        link::{Link, LinkTable},
        socket::{Binding, Socket},
    },
    probes::{select::ProbeSet, Probes},
};

/// Options of `hung`.
#[derive(Debug, Clone, clap::Args)]
pub struct HungArgs {
    /// Only receivers blocked at least this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_blocked: Duration,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// JSON: one object per receiver (one-shot), or one `snapshot` object per interval (`--follow`).
    #[arg(long)]
    pub json: bool,
    /// Keep running: record receives as they start (exact sockets) and interface deletions,
    /// and print the list every `--interval`.
    #[arg(long)]
    pub follow: bool,
    /// Interval between snapshots with `--follow`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Receive-path probe set instead of the best one allowed (fentry: `__skb_recv_udp`,
    /// `__skb_recv_datagram`, `__skb_wait_for_more_packets` trampolines; kprobe: the same with
    /// kprobes; tracepoint: the receive syscalls). Refused with the kernel's reason if unavailable.
    #[arg(long, value_enum)]
    pub probe_set: Option<ProbeSet>,
}

/// How the receiver's socket is known.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Certainty {
    /// Recorded by a probe when the receive started: the `struct sock *` argument of a kernel
    /// receive function (fentry/kprobe sets), or the fd resolved at syscall entry (tracepoints).
    Exact,
    /// The syscall's fd is still open and points at this socket (procfs).
    CurrentFd,
    /// The fd is closed; the socket is the only ownerless one in the task's netns.
    Inferred,
    /// The fd is closed and several ownerless sockets could be it (see `candidates`).
    Ambiguous,
    /// No socket could be tied to the receiver.
    Unknown,
}

/// State of an interface a receiver's socket is tied to.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IfaceState {
    /// `IFF_UP` set.
    Up,
    /// `IFF_UP` clear.
    Down,
    /// Deleted (seen by this ifsock run, or an ifindex that no longer exists).
    Deleted,
}

/// An interface a receiver's socket is tied to.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct IfaceTie {
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name, when known.
    pub name: Option<String>,
    /// How the socket is tied to it.
    pub binding: Binding,
    /// Its state.
    pub state: IfaceState,
}

/// One blocked receiver.
#[derive(Clone, Debug, Serialize)]
pub struct HungReceiver {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command.
    pub comm: String,
    /// `recvmsg`, `recvfrom`, `recvmmsg` or `read`; `?` when unknown.
    pub syscall: &'static str,
    /// The fd passed to the syscall (None when the probe saw only the `struct sock` and the
    /// thread's `/proc/.../syscall` no longer shows it).
    pub fd: Option<u32>,
    /// Whether that fd still refers to the socket in the task's fd table.
    pub fd_open: bool,
    /// Blocked time in ns (None when it cannot be measured).
    pub blocked_ns: Option<u64>,
    /// Where `blocked_ns` comes from: `syscall_entry` (tracepoint timestamp), `function_entry`
    /// (entry of `__skb_recv_udp`/`__skb_recv_datagram`/`__skb_wait_for_more_packets`) or
    /// `sched_exec_start` (procfs estimate).
    pub blocked_source: &'static str,
    /// The probe that recorded the receive (`fentry:__skb_recv_udp`,
    /// `tracepoint:syscalls:sys_enter_recvmsg`, ...), None for procfs-only receivers.
    pub probe: Option<String>,
    /// Sleeping in `__skb_wait_for_more_packets` right now (kernel-function sets; None otherwise).
    pub in_wait: Option<bool>,
    /// How the socket is known.
    pub certainty: Certainty,
    /// The evidence, in words.
    pub evidence: String,
    /// No fd references the socket: only the blocked receive keeps it alive.
    pub orphaned: bool,
    /// The socket, when known.
    pub socket: Option<Socket>,
    /// Candidate socket inodes when `certainty` is `ambiguous`.
    pub candidates: Vec<SockInode>,
    /// Interfaces the socket is tied to (wildcard sockets: every interface of the netns).
    pub interfaces: Vec<IfaceTie>,
    /// An interface it is tied to by device or address is down or deleted, or (wildcard with
    /// IP_PKTINFO) one of its netns's interfaces was deleted while it waited.
    pub stranded: bool,
}

/// What `collect` needs besides the probes.
#[derive(Default)]
pub struct Context {
    /// Links of each netns (current).
    pub links: HashMap<NetnsIno, Vec<Link>>,
    /// Interfaces deleted while this run watched, per netns.
    pub deleted: HashMap<NetnsIno, Vec<Link>>,
}

fn ties(socket: &Socket, ctx: &Context) -> Vec<IfaceTie> {
    let mut out = Vec::new();
    let current = ctx.links.get(&socket.netns).map(Vec::as_slice).unwrap_or_default();
    let deleted = ctx.deleted.get(&socket.netns).map(Vec::as_slice).unwrap_or_default();
    for (links, gone) in [(current, false), (deleted, true)] {
        for l in links {
            let addrs: Vec<IpAddr> = l.addrs.iter().copied().collect();
            if let Some(binding) = socket.binding_to(socket.netns, l.ifindex, &addrs) {
                let state = if gone { IfaceState::Deleted } else if l.is_up() { IfaceState::Up } else { IfaceState::Down };
                out.push(IfaceTie { ifindex: l.ifindex, name: Some(l.name.clone()), binding, state });
            }
        }
    }
    if socket.bound_dev_if != 0 && !out.iter().any(|t| t.ifindex.0 == socket.bound_dev_if) {
        out.push(IfaceTie { ifindex: IfIndex(socket.bound_dev_if), name: None, binding: Binding::Device, state: IfaceState::Deleted });
    }
    out
}

/// Whether this one tie strands a socket: a device or address binding to an interface that is
/// not up, or a wildcard IP_PKTINFO socket whose netns lost the interface.
pub fn tie_strands(pktinfo: bool, t: &IfaceTie) -> bool {
    match t.binding {
        Binding::Device | Binding::Address => t.state != IfaceState::Up,
        Binding::Wildcard => pktinfo && t.state == IfaceState::Deleted,
    }
}

fn stranded(socket: &Socket, ties: &[IfaceTie]) -> bool {
    ties.iter().any(|t| tie_strands(socket.pktinfo, t))
}

fn fd_points_at(pid: u32, fd: u32, ino: SockInode) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|l| l.to_string_lossy() == format!("socket:[{}]", ino.0))
        .unwrap_or(false)
}

/// Every blocked receiver at least `min_blocked` long (sorted, longest first).
///
/// # Errors
/// Iterator or map read failures.
pub fn collect(probes: &mut Probes, ctx: &Context, min_blocked: Duration, pid: Option<u32>) -> Result<Vec<HungReceiver>> {
    collect_from(probes, ctx, min_blocked, pid, procfs::blocked_receivers(pid))
}

/// [`collect`] with a procfs scan the caller already made (`procfs::blocked_receivers(pid)`).
///
/// # Errors
/// Iterator or map read failures.
pub fn collect_from(
    probes: &mut Probes,
    ctx: &Context,
    min_blocked: Duration,
    pid: Option<u32>,
    blocked: Vec<procfs::BlockedThread>,
) -> Result<Vec<HungReceiver>> {
    let sockets = snapshot::sockets(probes, None)?;
    let own = netns::current_ino()?;
    let mut extra: Vec<Socket> = Vec::new();
    // Receivers in other namespaces: their sockets come from that namespace's iterator run.
    let mut other_ns: Vec<NetnsIno> = blocked.iter().map(|b| b.netns).filter(|n| *n != own).collect();
    other_ns.sort();
    other_ns.dedup();
    if !other_ns.is_empty() {
        for h in netns::all().into_iter().filter(|h| other_ns.contains(&h.ino)) {
            extra.extend(snapshot::sockets(probes, Some(&h))?);
        }
    }
    let all: Vec<&Socket> = sockets.iter().chain(extra.iter()).collect();
    let by_ino: HashMap<SockInode, &Socket> = all.iter().map(|s| (s.inode, *s)).collect();
    let now = monotonic_ns();
    let min = min_blocked.as_nanos() as u64;
    let mut out = Vec::new();
    let mut seen_tids = std::collections::HashSet::new();

    let by_tid: HashMap<u32, &procfs::BlockedThread> = blocked.iter().map(|b| (b.tid, b)).collect();
    for e in probes.inflight()? {
        if pid.is_some_and(|p| p != e.pid) || !procfs::thread_alive(e.pid, e.tid) {
            continue;
        }
        let proc_view = by_tid.get(&e.tid).copied();
        // A kretprobe can miss a return (its instance pool is bounded), leaving a record behind
        // a thread that is no longer receiving: trust a kprobe record only while procfs agrees.
        if e.via == ProbeVia::Kprobe && proc_view.is_none() {
            continue;
        }
        let blocked_ns = now.saturating_sub(e.since_ns);
        seen_tids.insert(e.tid);
        if blocked_ns < min {
            continue;
        }
        let (syscall, fd) = match (e.fd, proc_view) {
            (Some(fd), _) => (e.syscall_name().unwrap_or("?"), Some(fd)),
            (None, Some(b)) => (syscall_name(b.syscall), Some(b.fd)),
            (None, None) => ("?", None),
        };
        let socket = by_ino.get(&e.ino).map(|s| (*s).clone());
        let tie = socket.as_ref().map(|s| ties(s, ctx)).unwrap_or_default();
        let probe = e.probe_name();
        out.push(HungReceiver {
            pid: e.pid,
            tid: e.tid,
            comm: e.comm.clone(),
            syscall,
            fd,
            fd_open: fd.is_some_and(|fd| fd_points_at(e.pid, fd, e.ino)),
            blocked_ns: Some(blocked_ns),
            blocked_source: if e.entry == RecvEntry::Syscall { "syscall_entry" } else { "function_entry" },
            in_wait: (e.via != ProbeVia::Tracepoint).then_some(e.wait_since_ns.is_some()),
            certainty: Certainty::Exact,
            evidence: if e.entry == RecvEntry::Syscall {
                format!("socket inode {} resolved from fd {} at {syscall} entry ({probe})", e.ino.0, e.fd.map_or_else(|| "?".to_string(), |f| f.to_string()))
            } else {
                format!("socket inode {} from the struct sock argument of {probe}", e.ino.0)
            },
            probe: Some(probe),
            orphaned: socket.as_ref().is_some_and(|s| s.owners.is_empty()),
            stranded: socket.as_ref().is_some_and(|s| stranded(s, &tie)),
            socket,
            candidates: Vec::new(),
            interfaces: tie,
        });
    }

    for b in blocked {
        if seen_tids.contains(&b.tid) || b.blocked_ns.is_some_and(|n| n < min) {
            continue;
        }
        let (socket, certainty, evidence, candidates) = match b.fd_socket {
            Some(ino) => (
                by_ino.get(&ino).map(|s| (*s).clone()),
                Certainty::CurrentFd,
                format!("/proc/{}/task/{}/syscall: {} on fd {}; fd {} → socket:[{}] now", b.pid, b.tid, syscall_name(b.syscall), b.fd, b.fd, ino.0),
                Vec::new(),
            ),
            None => {
                let orphans: Vec<&Socket> = all.iter().copied().filter(|s| s.netns == b.netns && s.owners.is_empty() && s.inode.0 != 0 && s.state != "LISTEN")
                    .collect();
                match orphans.as_slice() {
                    [one] => (
                        Some((*one).clone()),
                        Certainty::Inferred,
                        format!("fd {} is closed; socket:[{}] is the only socket without an fd in netns {} (inference, not a record)", b.fd, one.inode, b.netns),
                        Vec::new(),
                    ),
                    [] => (None, Certainty::Unknown, format!("fd {} is closed and no ownerless socket exists in netns {}", b.fd, b.netns), Vec::new()),
                    many => (
                        None,
                        Certainty::Ambiguous,
                        format!("fd {} is closed; {} ownerless sockets in netns {} could be it", b.fd, many.len(), b.netns),
                        many.iter().map(|s| s.inode).collect(),
                    ),
                }
            }
        };
        let tie = socket.as_ref().map(|s| ties(s, ctx)).unwrap_or_default();
        out.push(HungReceiver {
            pid: b.pid,
            tid: b.tid,
            comm: b.comm,
            syscall: syscall_name(b.syscall),
            fd: Some(b.fd),
            fd_open: b.fd_socket.is_some(),
            blocked_ns: b.blocked_ns,
            blocked_source: "sched_exec_start",
            probe: None,
            in_wait: None,
            certainty,
            evidence,
            orphaned: socket.as_ref().is_some_and(|s| s.owners.is_empty()),
            stranded: socket.as_ref().is_some_and(|s| stranded(s, &tie)),
            socket,
            candidates,
            interfaces: tie,
        });
    }
    out.sort_by(|a, b| b.blocked_ns.cmp(&a.blocked_ns));
    Ok(out)
}

/// Runs `hung`.
///
/// # Errors
/// Probe loading or netlink failures.
pub async fn run(args: HungArgs) -> Result<()> {
    let mut probes = Probes::load(u64::MAX)?;
    let selection = probes.attach_recv(args.probe_set)?;
    let own = netns::current_ino()?;
    let mut ctx = Context::default();
    if !args.follow {
        ctx.links.insert(own, snapshot::links(None).await?);
        let rows = collect(&mut probes, &ctx, args.min_blocked, args.pid)?;
        return print(&rows, args.json, false);
    }
    // Subscribe before dumping so that no deletion falls between the two.
    let mut sub = Subscription::open(None)?;
    let handle = netlink::connect()?;
    let mut table = LinkTable::from_links(netlink::dump_links(&handle).await?);
    if args.json {
        json_line(&serde_json::json!({"type": "ready", "netns": own, "probe_set": selection, "probes": probes.attached}))?;
    } else {
        eprintln!("recording receives (receive path: {selection}); Ctrl-C to stop");
    }
    let mut tick = tokio::time::interval(args.interval);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            r = sub.recv() => {
                match r? {
                    Received::Updates(updates) => for u in updates {
                        let prior = match &u { crate::model::link::Update::DelLink { ifindex, .. } => table.get(*ifindex).cloned(), _ => None };
                        for c in table.apply(u) {
                            if c.kind == crate::model::link::ChangeKind::Deleted {
                                if let Some(link) = prior.clone() { ctx.deleted.entry(own).or_default().push(link); }
                            }
                        }
                    },
                    Received::Overrun => { table.diff_and_replace(netlink::dump_links(&handle).await?); }
                }
            }
            _ = tick.tick() => {
                ctx.links.insert(own, table.links().cloned().collect());
                let rows = collect(&mut probes, &ctx, args.min_blocked, args.pid)?;
                print(&rows, args.json, true)?;
            }
        }
    }
    Ok(())
}

fn print(rows: &[HungReceiver], json: bool, follow: bool) -> Result<()> {
    if json {
        if follow {
            return json_line(&serde_json::json!({"type": "snapshot", "ts_unix_ns": crate::render::unix_ns(), "receivers": rows}));
        }
        for r in rows {
            json_line(r)?;
        }
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let sock = r.socket.as_ref().map_or("?".into(), |s| format!("{:?} {}:{} inode {}{}", s.protocol, s.local_addr, s.local_port, s.inode, if s.pktinfo { " pktinfo" } else { "" }).to_lowercase());
            let ifaces = r.interfaces.iter().map(|t| format!("{}({:?},{:?})", t.name.clone().unwrap_or_else(|| t.ifindex.to_string()), t.binding, t.state).to_lowercase()).collect::<Vec<_>>().join(" ");
            vec![
                format!("{}/{}", r.pid, r.tid),
                r.comm.clone(),
                format!("{}(fd {}{})", r.syscall, r.fd.map_or("?".into(), |f| f.to_string()), if r.fd_open { "" } else { ", closed" }),
                r.blocked_ns.map_or("?".into(), human_ns),
                sock,
                format!("{:?}", r.certainty).to_lowercase(),
                if r.stranded { "STRANDED".into() } else { "-".into() },
                if ifaces.is_empty() { "-".into() } else { ifaces },
            ]
        })
        .collect();
    table(&["PID/TID", "COMM", "SYSCALL", "BLOCKED", "SOCKET", "CERTAINTY", "STATUS", "INTERFACES"], &cells)
}
