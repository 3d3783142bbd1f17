//! The teardown correlator: the step sequence (down → grace → delete → after-delete) as a state
//! machine, and the observer that turns kernel events and receiver scans into per-socket
//! findings. No I/O: the view feeds it decoded events, blocked-receiver scans, snapshots, step
//! results and CLOCK_MONOTONIC timestamps (ns), and asks it what to do next; it returns a
//! [`TeardownReport`].
//!
//! Sockets are keyed by (netns inode, socket inode): the veth peer's sockets live in another
//! netns and get the same observation as ours.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    engine::abort::{AbortReport, Skipped, Target},
    kernel::signals::Stop,
    model::{
        ids::{IfIndex, NetnsIno},
        kernel_event::InFlight,
        sock_error::SockError,
        socket::{Binding, Socket},
        stranded::Stranded,
        tie::TiedSocket,
        sys::errno_name,
        tun::TunFd,
    },
    probes::{events::Event, Counters},
};

/// (netns inode, socket inode): a socket, wherever it lives.
pub type SockKey = (NetnsIno, u64);

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

/// What the kernel answered to a down or delete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Acknowledged.
    Ok,
    /// Refused with this errno (positive) and text (`ENODEV: No such device`).
    Refused {
        /// Positive errno of the `NLMSG_ERROR`, when the failure was one.
        errno: Option<i32>,
        /// Text for the report.
        error: String,
    },
}

impl StepOutcome {
    fn vanished(&self) -> bool {
        matches!(self, StepOutcome::Refused { errno: Some(libc::ENODEV), .. })
    }
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

/// A thread in a receive on a socket: the one shape every source is reduced to (a procfs scan
/// of `/proc/PID/task/TID/syscall`, an in-flight record (`INFLIGHT_SLOTS`/`INFLIGHT_RECV`), the entry inside a `RecvDone`
/// event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedRecv {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// fd (None: a kernel-function probe knows the `struct sock`, not the fd).
    pub fd: Option<u32>,
    /// `read`, `recvfrom`, `recvmsg`, `recvmmsg`, or `?`.
    pub syscall: &'static str,
    /// The socket.
    pub sock: SockKey,
}

impl BlockedRecv {
    /// From an in-flight record (a slot or `INFLIGHT_RECV` value, or the entry of a `RecvDone` event): the fd
    /// and syscall number are known for the tracepoint set only (`fd == NO_FD` otherwise).
    pub fn from_inflight(r: &InFlight) -> Self {
        BlockedRecv {
            pid: r.pid,
            tid: r.tid,
            comm: r.comm.clone(),
            fd: r.fd,
            syscall: r.syscall_name().unwrap_or("?"),
            sock: (r.netns, r.ino.0),
        }
    }
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

impl ReceiverSeen {
    /// The one constructor: a receiver first seen as `b`, nothing known yet of its fate.
    fn new(b: &BlockedRecv) -> Self {
        ReceiverSeen {
            pid: b.pid,
            tid: b.tid,
            comm: b.comm.clone(),
            fd: b.fd,
            syscall: b.syscall.to_string(),
            blocked_at_down: false,
            woke_ms: None,
            ret: None,
            error: None,
            blocked_at_end: false,
        }
    }
}

/// One socket tied to an interface and what it saw.
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

/// How another interface is bound up with the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The other end of a veth pair (`IFLA_LINK`, with `IFLA_LINK_NETNSID` when in another netns).
    VethPeer,
    /// A port of the target bridge (its `IFLA_MASTER` is the target).
    BridgePort,
    /// The bridge the target is a port of (the target's `IFLA_MASTER`).
    Master,
}

impl Relation {
    /// What the delete does to it: `veth_dellink()` unregisters the peer too; deleting a bridge
    /// releases its ports (`br_dev_delete()` → `del_nbp()`); deleting a port removes it from
    /// its master.
    pub fn fate(self) -> &'static str {
        match self {
            Relation::VethPeer => "deleted",
            Relation::BridgePort => "released",
            Relation::Master => "loses_port",
        }
    }
}

/// Another interface the delete takes with it or changes.
#[derive(Clone, Debug, Serialize)]
pub struct Companion {
    /// How it relates to the target.
    pub relation: Relation,
    /// `deleted`, `released` or `loses_port` (see [`Relation::fate`]).
    pub fate: &'static str,
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name under /run/netns, when it has one.
    pub netns_name: Option<String>,
    /// ifindex in its netns.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// Sockets bound to it (device or address), with what they saw.
    pub sockets: Vec<SocketSeen>,
    /// It no longer exists after the teardown (`None`: not checked, e.g. a dry run).
    pub gone: Option<bool>,
}

/// A companion before the teardown, as the view found it.
#[derive(Clone, Debug)]
pub struct CompanionPlan {
    /// How it relates to the target.
    pub relation: Relation,
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name, when it has one.
    pub netns_name: Option<String>,
    /// ifindex in its netns.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// Its tied sockets, split as for the target (listed, wildcard).
    pub sockets: Vec<TiedSocket>,
    /// Every socket of its netns (to place socket-error reports that carry no inode).
    pub netns_sockets: Vec<Socket>,
}

/// What the teardown left the target in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftState {
    /// Nothing was changed (dry run, refused, or the down failed).
    Untouched,
    /// Set down, not deleted (interrupted, or the delete failed).
    Down,
    /// Deleted by ifsock.
    Deleted,
    /// Vanished: deleted by someone else.
    Gone,
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
    /// Other interfaces the delete takes with it or changes (veth peer, bridge ports, master).
    pub companions: Vec<Companion>,
    /// For a tun/tap: the fds that hold it (from `iter/task_file`, `struct tun_file`).
    pub tun_holders: Vec<TunFd>,
    /// A SIGINT/SIGTERM ended the teardown early.
    pub interrupted: bool,
    /// Which signal, when interrupted.
    pub signal: Option<Stop>,
    /// Why the teardown failed, when it did.
    pub error: Option<String>,
    /// What the target was left in.
    pub state_left: LeftState,
    /// Command that undoes what was done, when the target was left down.
    pub restore: Option<String>,
    /// Command that completes the teardown, when the target was left down.
    pub finish: Option<String>,
    /// What could not be observed on this kernel, with the reason.
    pub unobserved: Vec<String>,
    /// eBPF counters (`ringbuf_drops` > 0 means events were lost).
    pub counters: Counters,
    /// `--abort-stranded`: the sockets destroyed after the delete (the dry run: those that would
    /// be), as `abort --json` reports them; null without `--abort-stranded` or when the step
    /// did not run (the delete did not happen).
    pub abort: Option<AbortReport>,
}

/// The target as found before the teardown.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name, when it has one (for the restore/finish commands).
    pub netns_name: Option<String>,
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// `IFF_UP` now.
    pub was_up: bool,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Dry run.
    pub dry_run: bool,
    /// Grace period, ms.
    pub grace_ms: u64,
    /// Sockets tied to it (device, address, wildcard).
    pub sockets: Vec<TiedSocket>,
    /// Every socket of its netns.
    pub netns_sockets: Vec<Socket>,
    /// Interfaces the delete takes with it.
    pub companions: Vec<CompanionPlan>,
    /// Fds holding it, for a tun/tap.
    pub tun_holders: Vec<TunFd>,
}

/// What the view must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the down request; report with [`Teardown::down_sent`] and [`Teardown::down_done`].
    SetDown,
    /// Observe until the grace deadline, a vanish, or a signal; then feed the end observations
    /// and call [`Teardown::grace_over`].
    Observe,
    /// Send the delete request; report with [`Teardown::delete_done`].
    Delete,
    /// The interface is deleted: run what comes after the delete (`--abort-stranded`: destroy
    /// [`Teardown::abort_candidates`], then [`Teardown::abort_done`]; without it call
    /// [`Teardown::after_delete_done`]).
    AfterDelete,
    /// Print the report.
    Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Planned,
    Observing,
    Observed,
    Deleted,
    Done,
}

/// `ms` after `t0` (ns, CLOCK_MONOTONIC), rounded to 0.1 ms; negative before `t0`.
pub fn ms_since(ts_ns: u64, t0: u64) -> f64 {
    let d = ts_ns as i128 - t0 as i128;
    (d as f64 / 100_000.0).round() / 10.0
}

/// Collects events of the observation into per-socket findings.
#[derive(Default)]
pub struct Observer {
    t0: u64,
    /// Socket inode → its key, for the watched sockets (sockfs inode numbers are global, so
    /// events that carry no netns are placed by inode).
    watched: HashMap<u64, SockKey>,
    sends: BTreeMap<(SockKey, u32, u32, i32), SendErrorsSeen>,
    receivers: BTreeMap<(SockKey, u32), ReceiverSeen>,
    sock_errors: BTreeMap<(SockKey, i32), SockErrorsSeen>,
    /// Every socket of the watched netns, to place reports that carry no inode (classic tracepoint).
    sockets: Vec<Socket>,
}

impl Observer {
    /// Watches `keys`; `sockets` places inode-less socket-error reports; `t0` is the down request.
    pub fn new(keys: impl IntoIterator<Item = SockKey>, sockets: Vec<Socket>, t0: u64) -> Self {
        let watched = keys.into_iter().filter(|k| k.1 != 0).map(|k| (k.1, k)).collect();
        Observer { t0, watched, sockets, ..Default::default() }
    }

    fn key(&self, ino: u64) -> Option<SockKey> {
        self.watched.get(&ino).copied()
    }

    /// Folds one kernel event in; events on sockets not watched are ignored.
    pub fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::SendError(e) => {
                let Some(key) = self.key(e.ino.0) else { return };
                let errno = e.errno;
                let at = ms_since(e.ts_ns, self.t0);
                let entry = self.sends.entry((key, e.tid, e.fd, errno)).or_insert_with(|| SendErrorsSeen {
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
            Event::RecvDone(d) => {
                let Some(key) = self.key(d.entry.ino.0) else { return };
                let mut b = BlockedRecv::from_inflight(&d.entry);
                b.sock = key;
                let t0 = self.t0;
                let r = self.receiver(&b);
                r.blocked_at_down |= d.entry.since_ns < t0;
                // Keep the first wake-up after down: that is the one the teardown caused.
                if r.woke_ms.is_none() && d.ts_ns >= t0 {
                    r.woke_ms = Some(ms_since(d.ts_ns, t0));
                    r.ret = Some(d.ret);
                    r.error = (d.ret < 0).then(|| errno_name(i32::try_from(-d.ret).unwrap_or(0)));
                }
            }
            Event::SockError(e) => self.on_sock_error(e),
            _ => {}
        }
    }

    fn receiver(&mut self, b: &BlockedRecv) -> &mut ReceiverSeen {
        self.receivers.entry((b.sock, b.tid)).or_insert_with(|| ReceiverSeen::new(b))
    }

    fn on_sock_error(&mut self, e: &SockError) {
        let ino = match e.inode {
            Some(ino) => ino.0,
            None if e.netns.is_none() => e.match_socket(&self.sockets).map_or(0, |s| s.inode.0),
            None => 0,
        };
        let Some(key) = self.key(ino) else { return };
        if e.netns.is_some_and(|n| n != key.0) {
            return;
        }
        let at = ms_since(e.ts_ns, self.t0);
        let entry = self.sock_errors.entry((key, e.errno)).or_insert_with(|| SockErrorsSeen {
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

    /// Receivers blocked when the down request was sent.
    pub fn blocked_at_down(&mut self, blocked: &[BlockedRecv]) {
        for b in blocked {
            if let Some(key) = self.key(b.sock.1) {
                self.receiver(&BlockedRecv { sock: key, ..b.clone() }).blocked_at_down = true;
            }
        }
    }

    /// Receivers blocked at the end of grace.
    pub fn blocked_at_end(&mut self, blocked: &[BlockedRecv]) {
        for b in blocked {
            if let Some(key) = self.key(b.sock.1) {
                self.receiver(&BlockedRecv { sock: key, ..b.clone() }).blocked_at_end = true;
            }
        }
    }

    /// Send errors, kernel-reported errors and receivers of one socket.
    pub fn for_socket(&self, key: SockKey) -> (Vec<SendErrorsSeen>, Vec<SockErrorsSeen>, Vec<ReceiverSeen>) {
        let sends = self.sends.iter().filter(|((k, ..), _)| *k == key).map(|(_, v)| v.clone()).collect();
        let errs = self.sock_errors.iter().filter(|((k, _), _)| *k == key).map(|(_, v)| v.clone()).collect();
        let recvs = self.receivers.iter().filter(|((k, _), _)| *k == key).map(|(_, v)| v.clone()).collect();
        (sends, errs, recvs)
    }
}

fn key_of(t: &TiedSocket) -> SockKey {
    (t.socket.netns, t.socket.inode.0)
}

/// The teardown of one interface as a state machine; see [`Next`] for the sequence.
pub struct Teardown {
    plan: Plan,
    phase: Phase,
    obs: Observer,
    down: Option<Step>,
    delete: Option<Step>,
    vanished_ms: Option<f64>,
    interrupted: Option<Stop>,
    error: Option<String>,
    /// Sockets alive at the end of grace (`None` until the end snapshot).
    alive: Option<HashSet<SockKey>>,
    companion_gone: Vec<Option<bool>>,
    unobserved: Vec<String>,
    abort: Option<AbortReport>,
}

impl Teardown {
    /// Starts from the plan (nothing done yet).
    pub fn new(plan: Plan) -> Self {
        let mut keys: Vec<SockKey> = plan.sockets.iter().map(key_of).collect();
        let mut sockets = plan.netns_sockets.clone();
        for c in &plan.companions {
            keys.extend(c.sockets.iter().map(key_of));
            sockets.extend(c.netns_sockets.iter().cloned());
        }
        let companion_gone = vec![None; plan.companions.len()];
        Teardown {
            obs: Observer::new(keys, sockets, 0),
            plan,
            phase: Phase::Planned,
            down: None,
            delete: None,
            vanished_ms: None,
            interrupted: None,
            error: None,
            alive: None,
            companion_gone,
            unobserved: Vec::new(),
            abort: None,
        }
    }

    /// Replaces the plan by one taken again after the probes were attached (anything that
    /// appeared since the first one is then both in the plan and traced). Before the down only.
    pub fn replan(&mut self, plan: Plan) {
        if self.phase == Phase::Planned {
            let unobserved = std::mem::take(&mut self.unobserved);
            *self = Teardown::new(plan);
            self.unobserved = unobserved;
        }
    }

    /// The plan it was made from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        if self.plan.dry_run || self.error.is_some() {
            return Next::Report;
        }
        match self.phase {
            Phase::Planned if self.interrupted.is_none() => Next::SetDown,
            Phase::Observing => Next::Observe,
            Phase::Observed if self.interrupted.is_none() && self.vanished_ms.is_none() => Next::Delete,
            Phase::Deleted => Next::AfterDelete,
            _ => Next::Report,
        }
    }

    /// Keys of the watched sockets (target's and companions').
    pub fn watched(&self) -> HashSet<SockKey> {
        self.obs.watched.values().copied().collect()
    }

    /// Owners' pids of the listed sockets (to narrow the procfs receiver scan).
    pub fn owner_pids(&self) -> HashSet<u32> {
        let companions = self.plan.companions.iter().flat_map(|c| c.sockets.iter());
        self.plan.sockets.iter().chain(companions).flat_map(|t| t.socket.owners.iter().map(|o| o.pid)).collect()
    }

    /// The down request is being sent now (`t0`, ns): every time in the report is relative to it.
    pub fn down_sent(&mut self, t0: u64) {
        self.obs.t0 = t0;
    }

    /// The kernel answered the down request at `ack` (ns); `blocked` were blocked when it was sent.
    pub fn down_done(&mut self, ack: u64, outcome: StepOutcome, blocked: &[BlockedRecv]) {
        self.obs.blocked_at_down(blocked);
        self.down = Some(step(0.0, ms_since(ack, self.obs.t0), &outcome));
        self.phase = Phase::Observing;
        if outcome.vanished() {
            self.vanished_ms = Some(0.0);
            self.phase = Phase::Done;
        } else if let StepOutcome::Refused { error, .. } = outcome {
            self.error = Some(format!("setting {} down (RTM_NEWLINK ifi_change=IFF_UP): {error}", self.plan.ifname));
            self.phase = Phase::Done;
        }
    }

    /// The interface was gone before the down request (between the plan and the down).
    pub fn vanished_before_down(&mut self) {
        self.vanished_ms = Some(0.0);
        self.phase = Phase::Done;
    }

    /// Receivers blocked right now, in the dry run (reported as blocked now).
    pub fn blocked_now(&mut self, blocked: &[BlockedRecv]) {
        self.obs.blocked_at_down(blocked);
    }

    /// One kernel event during grace.
    pub fn on_event(&mut self, ev: &Event) {
        self.obs.on_event(ev);
    }

    /// The interface disappeared at `now` (ns) without ifsock deleting it.
    pub fn vanished(&mut self, now: u64) {
        self.vanished_ms.get_or_insert(ms_since(now, self.obs.t0));
    }

    /// Has it vanished?
    pub fn has_vanished(&self) -> bool {
        self.vanished_ms.is_some()
    }

    /// A SIGINT/SIGTERM arrived: grace ends, nothing is deleted.
    pub fn interrupt(&mut self, stop: Stop) {
        self.interrupted.get_or_insert(stop);
    }

    /// Grace is over (deadline, vanish or signal): `blocked` are the receivers still blocked and
    /// `alive` the sockets still in the end snapshots (`None`: no snapshot could be taken).
    pub fn grace_over(&mut self, blocked: &[BlockedRecv], alive: Option<HashSet<SockKey>>) {
        self.obs.blocked_at_end(blocked);
        self.alive = alive;
        self.phase = Phase::Observed;
    }

    /// The delete request was sent at `at` and answered at `ack` (ns).
    pub fn delete_done(&mut self, at: u64, ack: u64, outcome: StepOutcome) {
        self.delete = Some(step(ms_since(at, self.obs.t0), ms_since(ack, self.obs.t0), &outcome));
        match outcome {
            StepOutcome::Ok => self.phase = Phase::Deleted,
            o if o.vanished() => {
                self.vanished_ms = Some(ms_since(at, self.obs.t0));
                self.phase = Phase::Done;
            }
            StepOutcome::Refused { error, .. } => {
                self.error = Some(format!("deleting {} (RTM_DELLINK): {error}", self.plan.ifname));
                self.phase = Phase::Done;
            }
        }
    }

    /// What follows the delete is done.
    pub fn after_delete_done(&mut self) {
        self.phase = Phase::Done;
    }

    /// `teardown --abort-stranded`: which of the listed sockets (the target's and the
    /// companions', e.g. the veth peer's in its netns) to destroy. `now` is a snapshot taken
    /// after the delete (a dry run passes the plan's sockets), `blocked` the receivers blocked
    /// now, `health` the socket's health in its netns (`model::stranded::health`).
    ///
    /// A socket is chosen when it is bound to the interface (device or address) and stranded
    /// now (`because: stranded`), or when a receiver is still blocked on it (`blocked`). A socket
    /// gone from `now`, or whose cookie changed (the inode reused), is not chosen. TCP LISTEN
    /// sockets are kept (returned as skipped): `abort --inode` destroys those on request.
    pub fn abort_candidates(&self, now: &[Socket], blocked: &[BlockedRecv], health: impl Fn(&Socket) -> Option<Stranded>) -> (Vec<Target>, Vec<Skipped>) {
        let p = &self.plan;
        let listed = p.sockets.iter().chain(p.companions.iter().flat_map(|c| c.sockets.iter()));
        let mut targets: Vec<Target> = Vec::new();
        let mut skipped = Vec::new();
        for t in listed {
            let key = key_of(t);
            let Some(s) = now.iter().find(|s| (s.netns, s.inode.0) == key && s.cookie == t.socket.cookie && s.inode.0 != 0) else { continue };
            if targets.iter().any(|x| (x.socket.netns, x.socket.inode.0) == key) {
                continue;
            }
            let stranded = health(s);
            let mut because = Vec::new();
            if matches!(t.binding, Some(Binding::Device | Binding::Address)) && stranded.is_some() {
                because.push("stranded");
            }
            if blocked.iter().any(|b| b.sock == key) {
                because.push("blocked");
            }
            if because.is_empty() {
                continue;
            }
            if s.protocol == crate::model::socket::Protocol::Tcp && s.state == "LISTEN" {
                skipped.push(Skipped { inode: s.inode, why: "TCP LISTEN socket: destroyed only when named by abort --inode" });
                continue;
            }
            targets.push(Target { socket: s.clone(), stranded, because });
        }
        (targets, skipped)
    }

    /// What the delete would do to `s` (for the dry run of `--abort-stranded`): a socket bound to
    /// the target's device or to the veth peer's becomes `device_deleted`; one bound to an
    /// address of the target becomes `address_gone` (unless another interface also holds it,
    /// which the real run checks after the delete).
    pub fn predicted_stranded(&self, s: &Socket) -> Option<Stranded> {
        use crate::model::stranded::StrandReason;
        let p = &self.plan;
        let deleted = std::iter::once((p.netns, p.ifindex, &p.ifname))
            .chain(p.companions.iter().filter(|c| c.relation == Relation::VethPeer).map(|c| (c.netns, c.ifindex, &c.ifname)));
        for (netns, ifindex, name) in deleted {
            if s.netns == netns && s.bound_dev_if == ifindex.0 {
                let address = (!s.local_addr.is_unspecified()).then_some(s.local_addr);
                return Some(Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(ifindex), ifname: Some(name.clone()), address, since_unix_ns: None });
            }
        }
        (s.netns == p.netns && s.bound_dev_if == 0 && p.addrs.contains(&s.local_addr))
            .then_some(Stranded { reason: StrandReason::AddressGone, ifindex: None, ifname: None, address: Some(s.local_addr), since_unix_ns: None })
    }

    /// The `--abort-stranded` step ran (or, in a dry run, was planned): its report goes into the
    /// teardown report. An interrupt during its observation window interrupts the teardown
    /// (exit 130/143); a socket that could not be destroyed fails it.
    pub fn abort_done(&mut self, r: AbortReport) {
        if let Some(stop) = r.interrupted {
            self.interrupt(stop);
        }
        if r.failed > 0 {
            self.error.get_or_insert(format!("--abort-stranded: {} of {} socket(s) could not be destroyed (see abort.sockets[].error)", r.failed, r.sockets.len()));
        }
        self.abort = Some(r);
        if self.phase == Phase::Deleted {
            self.phase = Phase::Done;
        }
    }

    /// Whether each companion (in plan order) is gone after the teardown (`None`: unchecked).
    pub fn companions_checked(&mut self, gone: Vec<Option<bool>>) {
        for (g, now) in self.companion_gone.iter_mut().zip(gone) {
            *g = now;
        }
    }

    /// The teardown failed for a reason outside the steps (a dump or snapshot failed).
    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    /// Something could not be observed, with the reason.
    pub fn unobserved(&mut self, what: String) {
        self.unobserved.push(what);
    }

    /// What the target is left in, from the steps done so far.
    pub fn state_left(&self) -> LeftState {
        if self.vanished_ms.is_some() {
            LeftState::Gone
        } else if self.delete.as_ref().is_some_and(|d| d.ok) {
            LeftState::Deleted
        } else if self.down.as_ref().is_some_and(|d| d.ok) {
            LeftState::Down
        } else {
            LeftState::Untouched
        }
    }

    /// The report. `counters`: the eBPF counters (`None`: unreadable, said in `unobserved`).
    pub fn report(&self, counters: Option<Counters>) -> TeardownReport {
        let p = &self.plan;
        let (sockets, unlisted) = self.seen(&p.sockets);
        let companions = p
            .companions
            .iter()
            .zip(&self.companion_gone)
            .map(|(c, gone)| Companion {
                relation: c.relation,
                fate: c.relation.fate(),
                netns: c.netns,
                netns_name: c.netns_name.clone(),
                ifindex: c.ifindex,
                ifname: c.ifname.clone(),
                kind: c.kind.clone(),
                sockets: self.seen(&c.sockets).0,
                gone: *gone,
            })
            .collect();
        let state_left = self.state_left();
        let (restore, finish) = if state_left == LeftState::Down {
            let ip_ns = p.netns_name.as_ref().map_or(String::new(), |n| format!("-n {n} "));
            let ifsock_ns = p.netns_name.as_ref().map_or(String::new(), |n| format!("--netns {n} "));
            (
                Some(format!("ip {ip_ns}link set {} up", p.ifname)),
                Some(format!("ifsock {ifsock_ns}teardown {} --grace 0 --yes", p.ifname)),
            )
        } else {
            (None, None)
        };
        let mut unobserved = self.unobserved.clone();
        if let Some(c) = counters.filter(|c| c.ringbuf_drops > 0) {
            unobserved.push(format!("{} events lost to a full ring buffer", c.ringbuf_drops));
        }
        TeardownReport {
            ty: "teardown",
            netns: p.netns,
            ifindex: p.ifindex,
            ifname: p.ifname.clone(),
            kind: p.kind.clone(),
            was_up: p.was_up,
            addrs: p.addrs.clone(),
            dry_run: p.dry_run,
            grace_ms: p.grace_ms,
            down: self.down.clone(),
            delete: self.delete.clone(),
            vanished_ms: self.vanished_ms,
            gone: matches!(state_left, LeftState::Deleted | LeftState::Gone),
            sockets,
            wildcard_sockets: unlisted,
            companions,
            tun_holders: p.tun_holders.clone(),
            interrupted: self.interrupted.is_some(),
            signal: self.interrupted,
            error: self.error.clone(),
            state_left,
            restore,
            finish,
            unobserved,
            counters: counters.unwrap_or_default(),
            abort: self.abort.clone(),
        }
    }

    /// Device/address-bound sockets with what they saw, plus wildcard sockets that saw errors;
    /// and the count of wildcard sockets left out.
    fn seen(&self, tied: &[TiedSocket]) -> (Vec<SocketSeen>, usize) {
        let mut unlisted = 0;
        let seen = tied
            .iter()
            .filter_map(|t| {
                let key = key_of(t);
                let (send_errors, socket_errors, receivers) = self.obs.for_socket(key);
                let wildcard = t.binding == Some(Binding::Wildcard);
                if wildcard && send_errors.is_empty() && socket_errors.is_empty() {
                    unlisted += 1;
                    return None;
                }
                let closed = key.1 != 0 && self.alive.as_ref().is_some_and(|a| !a.contains(&key));
                Some(SocketSeen { tied: t.clone(), send_errors, socket_errors, receivers, closed })
            })
            .collect();
        (seen, unlisted)
    }
}

fn step(at_ms: f64, ack_ms: f64, outcome: &StepOutcome) -> Step {
    match outcome {
        StepOutcome::Ok => Step { at_ms, ack_ms, ok: true, error: None },
        StepOutcome::Refused { error, .. } => Step { at_ms, ack_ms, ok: false, error: Some(error.clone()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::socket::Owner;

    const NS: NetnsIno = NetnsIno(7);
    const PEER_NS: NetnsIno = NetnsIno(8);
    const T0: u64 = 1_000_000_000;

    fn sock(netns: NetnsIno, ino: u64, lport: u16, dev: u32, laddr: [u8; 4]) -> Socket {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&laddr);
        let mut s = Socket::from_record(&ifsock_common::SockRecord {
            sk: ino, cookie: 0, ino, netns: netns.0, uid: 0, bound_dev_if: dev, family: 2, protocol: 17, state: 7, lport, rport: 0,
            flags: 0, laddr: l, raddr: [0; 16], rx_queue: 0, drops: 0,
        });
        s.owners = vec![Owner { pid: 7, comm: "app".into(), fd: 3 }];
        s
    }

    fn tied(s: Socket, binding: Binding) -> TiedSocket {
        TiedSocket { ifindex: Some(IfIndex(5)), ifname: Some("veth0".into()), binding: Some(binding), bound_dev_name: None, socket: s }
    }

    fn plan(dry_run: bool) -> Plan {
        let bound = sock(NS, 42, 5000, 5, [0, 0, 0, 0]);
        let wild = sock(NS, 44, 5002, 0, [0, 0, 0, 0]);
        let peer = sock(PEER_NS, 50, 6000, 9, [0, 0, 0, 0]);
        Plan {
            netns: NS,
            netns_name: Some("rz1".into()),
            ifindex: IfIndex(5),
            ifname: "veth0".into(),
            kind: Some("veth".into()),
            was_up: true,
            addrs: vec![],
            dry_run,
            grace_ms: 1000,
            sockets: vec![tied(bound.clone(), Binding::Device), tied(wild.clone(), Binding::Wildcard)],
            netns_sockets: vec![bound, wild],
            companions: vec![CompanionPlan {
                relation: Relation::VethPeer,
                netns: PEER_NS,
                netns_name: Some("rz2".into()),
                ifindex: IfIndex(9),
                ifname: "veth0p".into(),
                kind: Some("veth".into()),
                sockets: vec![tied(peer.clone(), Binding::Device)],
                netns_sockets: vec![peer],
            }],
            tun_holders: vec![],
        }
    }

    fn comm() -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..3].copy_from_slice(b"app");
        c
    }

    fn send_err(ts_ns: u64, errno: i32, ino: u64) -> Event {
        Event::SendError(crate::model::kernel_event::SendError::from_record(&ifsock_common::SendErrorEvent {
            kind: ifsock_common::EventKind::SendError as u32, pid: 7, ts_ns, ret: -i64::from(errno), ino, tid: 8, fd: 3, comm: comm(),
        }))
    }

    fn inflight(tid: u32, ino: u64, netns: NetnsIno, since_ns: u64) -> ifsock_common::InFlightRecv {
        // SAFETY: InFlightRecv is a POD record; all-zero is a valid value.
        let mut e: ifsock_common::InFlightRecv = unsafe { std::mem::zeroed() };
        e.since_ns = since_ns;
        e.ino = ino;
        e.pid = 7;
        e.tid = tid;
        e.fd = 4;
        e.syscall = 45;
        e.netns = netns.0;
        e.comm = comm();
        e
    }

    fn recv_done(tid: u32, ino: u64, since_ns: u64, ts_ns: u64, ret: i64) -> Event {
        Event::RecvDone(crate::model::kernel_event::RecvDone::from_record(&ifsock_common::RecvDoneEvent {
            kind: ifsock_common::EventKind::RecvDone as u32, _pad: 0, ts_ns, ret, entry: inflight(tid, ino, NS, since_ns),
        }))
    }

    fn blocked(tid: u32, sock: SockKey) -> BlockedRecv {
        BlockedRecv { pid: 7, tid, comm: "app".into(), fd: Some(4), syscall: "recvfrom", sock }
    }

    fn sock_of(r: &TeardownReport, ino: u64) -> &SocketSeen {
        r.sockets.iter().chain(r.companions.iter().flat_map(|c| &c.sockets)).find(|s| s.tied.socket.inode.0 == ino).expect("socket listed")
    }

    #[test]
    fn send_errors_aggregate_per_thread_fd_and_errno() {
        let mut obs = Observer::new([(NS, 42)], vec![], T0);
        obs.on_event(&send_err(1_000_600_000, libc::ENETUNREACH, 42));
        obs.on_event(&send_err(1_900_000_000, libc::ENETUNREACH, 42));
        obs.on_event(&send_err(1_950_000_000, libc::ENODEV, 42));
        obs.on_event(&send_err(1_950_000_000, libc::ENODEV, 43));
        let (sends, errs, recvs) = obs.for_socket((NS, 42));
        assert!(recvs.is_empty() && errs.is_empty());
        assert_eq!(sends.len(), 2);
        let unreach = sends.iter().find(|s| s.errno == libc::ENETUNREACH).unwrap();
        assert_eq!((unreach.error.as_str(), unreach.count, unreach.first_ms, unreach.last_ms), ("ENETUNREACH", 2, 0.6, 900.0));
        assert!(obs.for_socket((NS, 43)).0.is_empty(), "socket not tied to the interface");
        assert_eq!(ms_since(999_000_000, T0), -1.0);
    }

    #[test]
    fn kernel_reported_errors_aggregate_per_socket_and_errno_and_classic_reports_match_by_address() {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&[10, 9, 0, 1]);
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&[10, 9, 0, 2]);
        let s = Socket::from_record(&ifsock_common::SockRecord {
            sk: 1, cookie: 0, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 1, lport: 5000, rport: 9,
            flags: 0, laddr: l, raddr: r, rx_queue: 0, drops: 0,
        });
        let mut obs = Observer::new([(NS, 42)], vec![s], T0);
        let ev = |ts_ns: u64, error: i32, ino: u64, via: u32| {
            Event::SockError(crate::model::sock_error::SockError::from_event(&ifsock_common::SockErrorEvent {
                kind: ifsock_common::EventKind::SockError as u32, error, ts_ns, sk: 0, ino, netns: if ino == 0 { 0 } else { 7 },
                bound_dev_if: 0, family: 2, protocol: 17, lport: 5000, rport: 9, laddr: l, raddr: r, pid: 0, tid: 0, comm: [0; 16], via, _pad: 0,
            }))
        };
        obs.on_event(&ev(990_000_000, libc::ECONNREFUSED, 42, ifsock_common::sock_error_via::TP_BTF));
        obs.on_event(&ev(1_200_000_000, libc::ECONNREFUSED, 0, ifsock_common::sock_error_via::TRACEPOINT));
        obs.on_event(&ev(1_300_000_000, libc::ECONNREFUSED, 43, ifsock_common::sock_error_via::TP_BTF));
        let (_, seen, _) = obs.for_socket((NS, 42));
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].error.as_str(), seen[0].count, seen[0].first_ms, seen[0].last_ms), ("ECONNREFUSED", 2, -10.0, 200.0));
        assert_eq!(seen[0].remote.to_string(), "10.9.0.2:9");
        assert!(obs.for_socket((NS, 43)).1.is_empty(), "socket not tied to the interface");
    }

    #[test]
    fn receivers_blocked_at_down_that_woke_and_that_stayed_blocked() {
        let mut obs = Observer::new([(NS, 42), (NS, 43)], vec![], T0);
        obs.blocked_at_down(&[blocked(10, (NS, 42)), blocked(11, (NS, 43)), blocked(12, (NS, 99))]);
        // tid 10 wakes with ENETDOWN after down; tid 11 never wakes; tid 13 enters after down and returns data.
        obs.on_event(&recv_done(10, 42, 500_000_000, 1_250_000_000, -i64::from(libc::ENETDOWN)));
        obs.on_event(&recv_done(13, 42, 1_100_000_000, 1_300_000_000, 16));
        obs.on_event(&recv_done(13, 42, 1_300_000_000, 1_400_000_000, 8));
        obs.blocked_at_end(&[blocked(11, (NS, 43)), blocked(13, (NS, 42))]);
        let (_, _, r42) = obs.for_socket((NS, 42));
        let (_, _, r43) = obs.for_socket((NS, 43));
        let woke = r42.iter().find(|r| r.tid == 10).unwrap();
        assert!(woke.blocked_at_down && !woke.blocked_at_end);
        assert_eq!((woke.woke_ms, woke.ret, woke.error.as_deref()), (Some(250.0), Some(-i64::from(libc::ENETDOWN)), Some("ENETDOWN")));
        let later = r42.iter().find(|r| r.tid == 13).unwrap();
        assert!(!later.blocked_at_down && later.blocked_at_end, "entered after down, blocked again at end");
        assert_eq!((later.woke_ms, later.ret, later.syscall.as_str(), later.fd), (Some(300.0), Some(16), "recvfrom", Some(4)), "first wake-up kept");
        assert_eq!(r43.len(), 1);
        assert!(r43[0].blocked_at_down && r43[0].blocked_at_end && r43[0].woke_ms.is_none(), "nothing woke it");
        assert!(obs.for_socket((NS, 99)).2.is_empty(), "socket not watched");
    }

    #[test]
    fn full_sequence_reports_closed_sockets_peer_observation_and_deletion() {
        let mut td = Teardown::new(plan(false));
        assert_eq!(td.next(), Next::SetDown);
        td.down_sent(T0);
        td.down_done(T0 + 300_000, StepOutcome::Ok, &[blocked(10, (PEER_NS, 50))]);
        assert_eq!(td.next(), Next::Observe);
        td.on_event(&send_err(T0 + 900_000, libc::ENETUNREACH, 44));
        td.on_event(&send_err(T0 + 1_000_000, libc::ENETUNREACH, 50));
        assert_eq!(td.state_left(), LeftState::Down);
        let alive: HashSet<SockKey> = [(NS, 44), (PEER_NS, 50)].into_iter().collect();
        td.grace_over(&[blocked(10, (PEER_NS, 50))], Some(alive));
        assert_eq!(td.next(), Next::Delete);
        td.delete_done(T0 + 1_000_000_000, T0 + 1_010_000_000, StepOutcome::Ok);
        assert_eq!(td.next(), Next::AfterDelete, "the place for a step after the delete");
        td.after_delete_done();
        td.companions_checked(vec![Some(true)]);
        assert_eq!(td.next(), Next::Report);
        let r = td.report(Some(Counters::default()));
        assert_eq!((r.state_left, r.gone, r.interrupted, r.error.as_deref()), (LeftState::Deleted, true, false, None));
        assert_eq!(r.delete.as_ref().map(|d| (d.at_ms, d.ack_ms, d.ok)), Some((1000.0, 1010.0, true)));
        assert!(sock_of(&r, 42).closed, "gone from the end snapshot");
        let wildcard = sock_of(&r, 44);
        assert!(!wildcard.closed);
        assert_eq!(wildcard.send_errors[0].count, 1, "a wildcard socket that saw errors is listed");
        assert_eq!(r.wildcard_sockets, 0);
        let peer = &r.companions[0];
        assert_eq!((peer.relation, peer.fate, peer.gone, peer.netns_name.as_deref()), (Relation::VethPeer, "deleted", Some(true), Some("rz2")));
        let ps = &peer.sockets[0];
        assert_eq!((ps.send_errors.len(), ps.receivers.len(), ps.closed), (1, 1, false));
        assert!(ps.receivers[0].blocked_at_down && ps.receivers[0].blocked_at_end);
        assert!(r.restore.is_none() && r.finish.is_none());
    }

    #[test]
    fn quiet_wildcard_sockets_are_counted_not_listed_and_a_dry_run_changes_nothing() {
        let mut td = Teardown::new(plan(true));
        assert_eq!(td.next(), Next::Report, "a dry run does nothing");
        td.blocked_now(&[blocked(10, (NS, 42))]);
        let r = td.report(None);
        assert_eq!((r.state_left, r.gone, r.down.is_none(), r.delete.is_none()), (LeftState::Untouched, false, true, true));
        assert_eq!(r.sockets.len(), 1);
        assert_eq!(r.wildcard_sockets, 1);
        assert!(!r.sockets[0].closed, "no end snapshot: nothing is called closed");
        assert_eq!(r.sockets[0].receivers.len(), 1);
        assert_eq!(r.companions[0].gone, None);
    }

    #[test]
    fn vanished_interface_is_not_deleted() {
        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0 + 100_000, StepOutcome::Ok, &[]);
        td.vanished(T0 + 400_000_000);
        td.vanished(T0 + 500_000_000);
        td.grace_over(&[], None);
        assert_eq!(td.next(), Next::Report, "never delete a vanished interface");
        let r = td.report(None);
        assert_eq!((r.vanished_ms, r.gone, r.state_left), (Some(400.0), true, LeftState::Gone));
        assert!(r.delete.is_none());

        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0, StepOutcome::Refused { errno: Some(libc::ENODEV), error: "ENODEV: No such device".into() }, &[]);
        assert_eq!(td.next(), Next::Report);
        let r = td.report(None);
        assert_eq!((r.vanished_ms, r.error.as_deref(), r.state_left), (Some(0.0), None, LeftState::Gone));

        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0, StepOutcome::Ok, &[]);
        td.grace_over(&[], None);
        td.delete_done(T0 + 5, T0 + 6, StepOutcome::Refused { errno: Some(libc::ENODEV), error: "ENODEV: No such device".into() });
        assert_eq!((td.next(), td.state_left()), (Next::Report, LeftState::Gone));
    }

    #[test]
    fn interrupted_report_says_down_not_deleted_and_how_to_restore_or_finish() {
        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0 + 100_000, StepOutcome::Ok, &[]);
        td.interrupt(Stop::Sigterm);
        td.interrupt(Stop::Sigint);
        td.grace_over(&[], Some(HashSet::new()));
        assert_eq!(td.next(), Next::Report, "an interrupted teardown never deletes");
        let r = td.report(None);
        assert_eq!((r.interrupted, r.signal, r.state_left, r.gone), (true, Some(Stop::Sigterm), LeftState::Down, false));
        assert!(r.delete.is_none());
        assert_eq!(r.restore.as_deref(), Some("ip -n rz1 link set veth0 up"));
        assert_eq!(r.finish.as_deref(), Some("ifsock --netns rz1 teardown veth0 --grace 0 --yes"));
    }

    #[test]
    fn failed_steps_leave_a_stated_state() {
        let refused = || StepOutcome::Refused { errno: Some(libc::EPERM), error: "EPERM: Operation not permitted".into() };
        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0, refused(), &[]);
        let r = td.report(None);
        assert_eq!((td.next(), r.state_left), (Next::Report, LeftState::Untouched));
        assert!(r.error.as_deref().is_some_and(|e| e.contains("setting veth0 down") && e.contains("EPERM")), "{:?}", r.error);

        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0, StepOutcome::Ok, &[]);
        td.grace_over(&[], None);
        td.delete_done(T0 + 5, T0 + 6, refused());
        let r = td.report(None);
        assert_eq!((td.next(), r.state_left, r.gone), (Next::Report, LeftState::Down, false));
        assert!(r.finish.is_some() && r.error.as_deref().is_some_and(|e| e.contains("RTM_DELLINK")));

        let mut td = Teardown::new(plan(false));
        td.down_sent(T0);
        td.down_done(T0, StepOutcome::Ok, &[]);
        td.fail("taking the end-of-grace socket snapshot: boom".into());
        assert_eq!((td.next(), td.state_left()), (Next::Report, LeftState::Down));
    }

    #[test]
    fn abort_candidates_are_stranded_bound_or_blocked_sockets_still_there() {
        use crate::model::stranded::{StrandReason, Stranded};
        let mut p = plan(false);
        let listen = {
            let mut l = sock(NS, 46, 5003, 5, [0, 0, 0, 0]);
            l.protocol = crate::model::socket::Protocol::Tcp;
            l.state = "LISTEN";
            l
        };
        p.sockets.push(tied(listen.clone(), Binding::Device));
        let td = Teardown::new(p);
        let dead = |s: &Socket| (s.bound_dev_if != 0).then_some(Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(IfIndex(s.bound_dev_if)), ifname: None, address: None, since_unix_ns: None });
        let now = vec![sock(NS, 42, 5000, 5, [0; 4]), sock(NS, 44, 5002, 0, [0; 4]), sock(PEER_NS, 50, 6000, 9, [0; 4]), listen];
        // The wildcard socket 44 is chosen only because a receiver is still blocked on it.
        let (t, skipped) = td.abort_candidates(&now, &[blocked(9, (NS, 44))], dead);
        let got: Vec<_> = t.iter().map(|t| (t.socket.inode.0, t.because.clone())).collect();
        assert_eq!(got, vec![(42, vec!["stranded"]), (44, vec!["blocked"]), (50, vec!["stranded"])]);
        assert_eq!(skipped.iter().map(|s| s.inode.0).collect::<Vec<_>>(), vec![46], "LISTEN kept");
        // Closed since the plan, or the inode reused by another socket (cookie differs): not chosen.
        let mut reused = sock(NS, 42, 5000, 5, [0; 4]);
        reused.cookie = 99;
        let (t, _) = td.abort_candidates(&[reused], &[], dead);
        assert!(t.is_empty());
        // Healthy and nobody blocked: nothing to destroy.
        let (t, _) = td.abort_candidates(&now, &[], |_| None);
        assert!(t.is_empty());
        // The dry run predicts: bound to the target or to the veth peer → device_deleted.
        let pred = |s: &Socket| td.predicted_stranded(s).map(|st| (st.reason.name(), st.ifname));
        assert_eq!(pred(&now[0]), Some(("device_deleted", Some("veth0".into()))));
        assert_eq!(pred(&now[2]), Some(("device_deleted", Some("veth0p".into()))));
        assert_eq!(pred(&now[1]), None, "a wildcard socket is not predicted stranded");
    }
}
