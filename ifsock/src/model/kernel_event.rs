//! What the eBPF programs report, as domain types: receives in flight and finished, failed
//! sends, device close/unregister. `probes::events` and `Probes::inflight` build these from the
//! raw `ifsock_common` records, so nothing past `probes/` reads a raw record.
use ifsock_common::{device_reason, probe_via, recv_func, DeviceEvent, InFlightRecv, RecvDoneEvent, SendErrorEvent, NO_FD};
use serde::Serialize;

use super::ids::{comm_str, IfIndex, NetnsIno, SockInode};
use super::sys::recv_syscall_name as syscall_name;

/// The kind of probe that recorded an entry ([`ifsock_common::probe_via`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVia {
    /// A tracepoint (`syscalls:*`, `sock:*`, `skb:*`).
    Tracepoint,
    /// fentry/fexit.
    Fentry,
    /// kprobe/kretprobe.
    Kprobe,
}

impl ProbeVia {
    fn from_raw(v: u32) -> Self {
        match v {
            probe_via::FENTRY => ProbeVia::Fentry,
            probe_via::KPROBE => ProbeVia::Kprobe,
            _ => ProbeVia::Tracepoint,
        }
    }

    /// `tracepoint`, `fentry`, `kprobe`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeVia::Tracepoint => "tracepoint",
            ProbeVia::Fentry => "fentry",
            ProbeVia::Kprobe => "kprobe",
        }
    }
}

/// Where a receive was recorded ([`ifsock_common::recv_func`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecvEntry {
    /// A receive syscall (`sys_enter_{recvmsg,recvfrom,recvmmsg,read}`).
    Syscall,
    /// `__skb_recv_udp`.
    SkbRecvUdp,
    /// `__skb_recv_datagram`.
    SkbRecvDatagram,
    /// `__skb_wait_for_more_packets` with no enclosing receive function recorded.
    SkbWait,
}

impl RecvEntry {
    fn from_raw(f: u32) -> Self {
        match f {
            recv_func::SKB_RECV_UDP => RecvEntry::SkbRecvUdp,
            recv_func::SKB_RECV_DATAGRAM => RecvEntry::SkbRecvDatagram,
            recv_func::SKB_WAIT => RecvEntry::SkbWait,
            _ => RecvEntry::Syscall,
        }
    }

    /// The kernel function, `None` for a syscall entry.
    pub fn function(self) -> Option<&'static str> {
        match self {
            RecvEntry::Syscall => None,
            RecvEntry::SkbRecvUdp => Some("__skb_recv_udp"),
            RecvEntry::SkbRecvDatagram => Some("__skb_recv_datagram"),
            RecvEntry::SkbWait => Some("__skb_wait_for_more_packets"),
        }
    }
}

/// A receive that has not returned yet (an `INFLIGHT_SLOTS` slot, indexed by tid, or an `INFLIGHT_RECV` value for a tid beyond the slots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Entry time (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
    /// Kernel address of the `struct sock` (correlation only).
    pub sk: u64,
    /// Socket inode (0 when the sock has no `struct socket`).
    pub ino: SockInode,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The fd passed to the syscall; `None` for kernel-function probes (they see the sock only).
    pub fd: Option<u32>,
    /// Syscall number (`__syscall_nr`, this architecture's numbering); `None` for
    /// kernel-function probes.
    pub syscall: Option<u64>,
    /// Inode of the task's netns.
    pub netns: NetnsIno,
    /// Probe kind that recorded the entry.
    pub via: ProbeVia,
    /// What was entered.
    pub entry: RecvEntry,
    /// When the task entered `__skb_wait_for_more_packets` (ns), `None` when not waiting.
    pub wait_since_ns: Option<u64>,
    /// Time spent in earlier waits of this receive (ns).
    pub waited_ns: u64,
    /// Task command.
    pub comm: String,
}

/// Facts about a live thread that an in-flight record leaves to userspace ([`InFlight::complete`]).
/// The live source is `kernel::procfs::Procfs`; tests pass fakes.
pub trait ThreadFacts {
    /// The thread's netns inode (`/proc/PID/task/TID/ns/net`), `None` when it is gone.
    fn thread_netns(&self, pid: u32, tid: u32) -> Option<NetnsIno>;
    /// The thread's command (`/proc/PID/task/TID/comm`), `None` when it is gone.
    fn thread_comm(&self, pid: u32, tid: u32) -> Option<String>;
}

impl InFlight {
    /// Fills in the netns and comm, which the entry probes leave out to stay cheap (a helper
    /// and three faultable reads per receive that most receives, returning at once, never
    /// use); the thread is alive while its receive is in flight. Returns false when the record
    /// is no socket receive of a live thread: a syscall entry whose fd gave no socket inode
    /// (`recvfrom` on a pipe, failing with `ENOTSOCK` right after), or a thread gone since.
    pub fn complete(&mut self, facts: &impl ThreadFacts) -> bool {
        if self.ino.0 == 0 && self.fd.is_some() {
            return false;
        }
        if self.netns.0 == 0 {
            let Some(ns) = facts.thread_netns(self.pid, self.tid) else { return false };
            self.netns = ns;
        }
        if self.comm.is_empty() {
            self.comm = facts.thread_comm(self.pid, self.tid).unwrap_or_default();
        }
        true
    }

    /// Decodes an in-flight record (`INFLIGHT_SLOTS` slot or `INFLIGHT_RECV` value).
    pub fn from_record(r: &InFlightRecv) -> Self {
        let fd = (r.fd != NO_FD).then_some(r.fd);
        InFlight {
            since_ns: r.since_ns,
            sk: r.sk,
            ino: SockInode(r.ino),
            pid: r.pid,
            tid: r.tid,
            fd,
            syscall: (fd.is_some() && r.syscall != u32::MAX).then_some(u64::from(r.syscall)),
            netns: NetnsIno(r.netns),
            via: ProbeVia::from_raw(r.via),
            entry: RecvEntry::from_raw(r.func),
            wait_since_ns: (r.wait_since_ns != 0).then_some(r.wait_since_ns),
            waited_ns: r.waited_ns,
            comm: comm_str(&r.comm),
        }
    }

    /// The syscall's name when the record has one (`recvmsg`), else `None`.
    pub fn syscall_name(&self) -> Option<&'static str> {
        self.syscall.map(syscall_name)
    }

    /// The probe that recorded it, as `set:function` (`fentry:__skb_recv_udp`,
    /// `tracepoint:syscalls:sys_enter_recvmsg`).
    pub fn probe_name(&self) -> String {
        match self.entry.function() {
            Some(function) => format!("{}:{function}", self.via.as_str()),
            None => format!("tracepoint:syscalls:sys_enter_{}", self.syscall.map_or("?", syscall_name)),
        }
    }
}

/// A receive that returned after being in flight at least `RECV_REPORT_MIN_NS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvDone {
    /// Return time (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// Return value: the syscall's (bytes or `-errno`); for `__skb_recv_*` the datagram's
    /// length or `-errno`; for `__skb_wait_for_more_packets` 0 (woken), 1 (shut down) or `-errno`.
    pub ret: i64,
    /// What was recorded at entry.
    pub entry: InFlight,
}

impl RecvDone {
    /// Decodes a ring-buffer record.
    pub fn from_record(r: &RecvDoneEvent) -> Self {
        RecvDone { ts_ns: r.ts_ns, ret: r.ret, entry: InFlight::from_record(&r.entry) }
    }
}

/// A send syscall that failed (`sys_exit_{sendto,sendmsg}` with `ret < 0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Return time (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// Positive errno (`-ret`).
    pub errno: i32,
    /// Socket inode resolved from the fd at entry.
    pub ino: SockInode,
    /// File descriptor.
    pub fd: u32,
    /// Task command.
    pub comm: String,
}

impl SendError {
    /// Decodes a ring-buffer record.
    pub fn from_record(r: &SendErrorEvent) -> Self {
        SendError {
            pid: r.pid,
            tid: r.tid,
            ts_ns: r.ts_ns,
            errno: i32::try_from(r.ret.saturating_neg()).unwrap_or(0),
            ino: SockInode(r.ino),
            fd: r.fd,
            comm: comm_str(&r.comm),
        }
    }
}

/// Why a device event fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceReason {
    /// `netif_close_many` / `dev_close_many` / `__dev_close_many`: the device goes down.
    Close,
    /// `unregister_netdevice_queue`: the device is being deleted (or its netns torn down).
    Unregister,
}

impl DeviceReason {
    /// `close`, `unregister`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceReason::Close => "close",
            DeviceReason::Unregister => "unregister",
        }
    }
}

/// A device close/unregister seen at the kernel function, in the context of the task that
/// caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDeviceEvent {
    /// Close or unregister.
    pub reason: DeviceReason,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// `net_device.ifindex`.
    pub ifindex: IfIndex,
    /// The device's netns.
    pub netns: NetnsIno,
    /// Current task's thread-group id.
    pub pid: u32,
    /// Current task's thread id.
    pub tid: u32,
    /// Current task's command.
    pub comm: String,
    /// `net_device.name`.
    pub name: String,
    /// fentry or kprobe.
    pub via: ProbeVia,
}

impl KernelDeviceEvent {
    /// Decodes a ring-buffer record.
    pub fn from_record(e: &DeviceEvent) -> Self {
        KernelDeviceEvent {
            reason: if e.reason == device_reason::CLOSE { DeviceReason::Close } else { DeviceReason::Unregister },
            ts_ns: e.ts_ns,
            ifindex: IfIndex(e.ifindex),
            netns: NetnsIno(e.netns),
            pid: e.pid,
            tid: e.tid,
            comm: comm_str(&e.comm),
            name: comm_str(&e.name),
            via: ProbeVia::from_raw(e.via),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fd: u32, via: u32, func: u32, syscall: u32) -> InFlightRecv {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"serv");
        InFlightRecv {
            since_ns: 5, sk: 0x1000, ino: 42, pid: 7, tid: 8, fd, syscall, netns: 9, via, func,
            seq: 0, wait_since_ns: 0, waited_ns: 0, comm,
        }
    }

    #[test]
    fn in_flight_records_decode_sentinels_to_none_and_name_their_probe() {
        let nr = crate::model::sys::RECVMSG as u32;
        let sc = InFlight::from_record(&raw(3, probe_via::TRACEPOINT, recv_func::SYSCALL, nr));
        assert_eq!((sc.fd, sc.syscall_name(), sc.wait_since_ns), (Some(3), Some("recvmsg"), None));
        assert_eq!(sc.probe_name(), "tracepoint:syscalls:sys_enter_recvmsg");
        assert_eq!((sc.ino, sc.comm.as_str(), sc.entry), (SockInode(42), "serv", RecvEntry::Syscall));
        let fe = InFlight::from_record(&raw(NO_FD, probe_via::FENTRY, recv_func::SKB_RECV_UDP, u32::MAX));
        assert_eq!((fe.fd, fe.syscall), (None, None));
        assert_eq!(fe.probe_name(), "fentry:__skb_recv_udp");
        let kp = InFlight::from_record(&raw(NO_FD, probe_via::KPROBE, recv_func::SKB_WAIT, u32::MAX));
        assert_eq!((kp.via, kp.probe_name().as_str()), (ProbeVia::Kprobe, "kprobe:__skb_wait_for_more_packets"));
    }

    /// Fake procfs: one live thread (pid 7, tid 8) in netns 9.
    struct Facts;
    impl ThreadFacts for Facts {
        fn thread_netns(&self, pid: u32, tid: u32) -> Option<NetnsIno> {
            (pid, tid).eq(&(7, 8)).then_some(NetnsIno(9))
        }
        fn thread_comm(&self, pid: u32, tid: u32) -> Option<String> {
            (pid, tid).eq(&(7, 8)).then(|| "serv".into())
        }
    }

    /// A `recvfrom` entry as `recv_enter` records it: no netns, no comm.
    fn entry(ino: u64, tid: u32) -> InFlight {
        let nr = crate::model::sys::RECVMSG as u32;
        InFlight::from_record(&InFlightRecv { sk: 0, ino, netns: 0, comm: [0; 16], tid, ..raw(3, probe_via::TRACEPOINT, recv_func::SYSCALL, nr) })
    }

    #[test]
    fn an_entry_record_gets_netns_and_comm_from_procfs_and_a_non_socket_or_gone_thread_is_dropped() {
        let mut e = entry(42, 8);
        assert_eq!((e.netns, e.comm.as_str()), (NetnsIno(0), ""));
        assert!(e.complete(&Facts));
        assert_eq!((e.ino, e.netns, e.comm.as_str()), (SockInode(42), NetnsIno(9), "serv"));
        assert!(!entry(0, 8).complete(&Facts), "no socket inode behind the fd: the recvfrom fails with ENOTSOCK");
        assert!(!entry(42, 99).complete(&Facts), "thread 99 is gone");
        // What the probe recorded is kept: a kernel-function record has no fd, and its comm.
        let mut k = InFlight { netns: NetnsIno(0), ..InFlight::from_record(&raw(NO_FD, probe_via::FENTRY, recv_func::SKB_RECV_UDP, u32::MAX)) };
        assert!(k.complete(&Facts));
        assert_eq!((k.ino, k.netns, k.comm.as_str()), (SockInode(42), NetnsIno(9), "serv"));
    }

    #[test]
    fn send_errors_carry_a_positive_errno_and_devices_their_reason() {
        let e = SendError::from_record(&SendErrorEvent {
            kind: ifsock_common::EventKind::SendError as u32, pid: 7, ts_ns: 1, ret: -101, ino: 42, tid: 8, fd: 3, comm: [0; 16],
        });
        assert_eq!((e.errno, e.ino, e.fd), (101, SockInode(42), 3));
        let mut name = [0u8; 16];
        name[..3].copy_from_slice(b"vx0");
        let d = KernelDeviceEvent::from_record(&DeviceEvent {
            kind: ifsock_common::EventKind::Device as u32, reason: device_reason::UNREGISTER, ts_ns: 2, ifindex: 5, netns: 9,
            pid: 1, tid: 1, comm: [0; 16], name, via: probe_via::FENTRY, _pad: 0,
        });
        assert_eq!((d.reason.as_str(), d.via, d.ifindex, d.name.as_str()), ("unregister", ProbeVia::Fentry, IfIndex(5), "vx0"));
    }
}
