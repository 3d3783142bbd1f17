//! Receive tracking for `hung` and `watch`'s `receiver_stranded`: a receive on a socket is
//! recorded in `INFLIGHT_RECV` at syscall entry, with the socket resolved from the fd right then
//! (so a later `close()` of the fd cannot hide it), and removed at exit.
//!
//! Tracepoint probe set: `syscalls:sys_enter_{recvmsg,recvfrom,recvmmsg,read}` (fd @16,
//! `__syscall_nr` @8) and the matching `sys_exit_*` (ret @16).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use ifsock_common::{Counter, EventKind, InFlightRecv, RecvDoneEvent};

use crate::{
    kernel::{current_fd_socket, current_task, task_ids, task_netns},
    maps::{count, EVENTS, INFLIGHT_RECV},
};

#[unsafe(no_mangle)]
static RECV_REPORT_MIN_NS: aya_ebpf::Global<u64> = aya_ebpf::Global::new(u64::MAX);

/// Entry of a receive syscall: record it when the fd is a socket.
#[tracepoint]
pub fn recv_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the syscall tracepoint format (identical for the four syscalls).
    let (nr, fd) = unsafe {
        let Ok(nr) = ctx.read_at::<i32>(8) else { return 0 };
        let Ok(fd) = ctx.read_at::<u64>(16) else { return 0 };
        (nr, fd as u32)
    };
    let Some((sk, ino)) = current_fd_socket(fd) else { return 0 };
    let task = current_task();
    let (pid, tid, comm) = task_ids(task);
    let rec = InFlightRecv {
        // SAFETY: helper without preconditions.
        since_ns: unsafe { bpf_ktime_get_ns() },
        sk,
        ino,
        pid,
        tid,
        fd,
        syscall: nr as u32,
        netns: task_netns(task),
        _pad: 0,
        comm,
    };
    if INFLIGHT_RECV.insert(&tid, &rec, 0).is_err() {
        count(Counter::InflightFull);
    }
    0
}

/// Exit of a receive syscall: forget it, and report it if it had been in flight long enough.
#[tracepoint]
pub fn recv_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: value copied out of the map before removal.
    let Some(entry) = (unsafe { INFLIGHT_RECV.get(&tid).copied() }) else { return 0 };
    let _ = INFLIGHT_RECV.remove(&tid);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(entry.since_ns) < RECV_REPORT_MIN_NS.load() {
        return 0;
    }
    // SAFETY: ret offset from the sys_exit format.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0);
    let ev = RecvDoneEvent { kind: EventKind::RecvDone as u32, _pad: 0, ts_ns: now, ret, entry };
    if EVENTS.output(&ev, 0).is_err() {
        count(Counter::RingbufDrops);
    }
    0
}
