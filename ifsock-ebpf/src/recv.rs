//! Receive tracking for `hung`, `watch`'s `receiver_stranded` and `teardown`: a receive on a
//! socket is recorded in `INFLIGHT_RECV` (keyed by tid) when it starts and removed when it
//! returns; one that was in flight at least `RECV_REPORT_MIN_NS` emits a `RecvDoneEvent` (none
//! for `hung`, which sets it to `u64::MAX`; `teardown` 1 ms), shorter ones send nothing.
//!
//! Three probe sets, picked per function by userspace (fentry, else kprobe, else tracepoints):
//! - fentry/fexit and kprobe/kretprobe on `__skb_recv_udp` and `__skb_recv_datagram` (the
//!   `struct sock *` is argument 0; the datagram's `skb->len` or `-*err` at exit) and on
//!   `__skb_wait_for_more_packets` (the time actually spent asleep, its return code).
//! - Tracepoints: `syscalls:sys_enter_{recvmsg,recvfrom,recvmmsg,read}` (fd @16,
//!   `__syscall_nr` @8) and `sys_exit_*` (ret @16). Nothing else runs per receive:
//!   `sock:sock_recv_length` (the kernel's return, >= 6.4) and `skb:skb_copy_datagram_iovec`
//!   (bytes copied) were attached until no command read what they recorded, at ~70 ns and a
//!   tracepoint dispatch per receive each.
//!
//! The entry does the least it can, since it runs on every receive of the host: tid -> time,
//! fd, syscall and socket inode, one map insert. `recvmsg`/`recvfrom`/`recvmmsg` take only
//! sockets, so their fd is resolved in five reads without checks (`current_socket_fd_ino`);
//! `read` checks the inode mode (`current_fd_socket`), because every `read` of every file
//! enters here and only socket reads are recorded. The inode is taken at entry, not later:
//! the fd can be closed by another thread while the receive waits (seed 003), and the socket
//! then has no fd left to find it by. The netns and comm are not recorded at entry: a receive
//! that reports at exit fills them in then ([`complete`]), and userspace completes a record it
//! reads while the receive is still in flight from procfs (`InFlight::complete`:
//! `/proc/PID/task/TID/{comm,ns/net}`).
//!
//! When both kinds are attached (a kernel-function probe missing for one function), a kernel
//! function entered inside a recorded syscall refines that record instead of replacing it.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext as _,
};
use ifsock_common::{probe_via, recv_func, Counter, EventKind, InFlightRecv, RecvDoneEvent, COMM_LEN, NO_FD};

use crate::{
    kernel::{current_fd_socket, current_socket_fd_ino, current_task, off, rd, sk_ino, task_netns},
    maps::{count, EVENTS, INFLIGHT_RECV, RECV_ERR_PTR},
};

#[unsafe(no_mangle)]
static RECV_REPORT_MIN_NS: aya_ebpf::Global<u64> = aya_ebpf::Global::new(u64::MAX);

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A field of a classic tracepoint's record, loaded directly from the context (the verifier
/// allows aligned reads at offsets >= 8, `tp_prog_is_valid_access`) instead of through
/// `bpf_probe_read_kernel` (aya's `read_at`): one helper call fewer per field on the receive
/// path, which runs on every `read` of the host.
///
/// # Safety
/// `off` is a field of the tracepoint's format, aligned to `size_of::<T>()` (1, 2, 4 or 8).
#[inline(always)]
unsafe fn tp_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: per the caller; the context is the tracepoint's record.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// A new in-flight record for the current task: time, pid and tid from helpers. The netns
/// and comm are left empty (0, zeros) for [`complete`] or userspace to fill in: they cost a
/// helper and three faultable reads (`task->nsproxy->net_ns->ns.inum`) that most receives,
/// which return at once, never use.
#[inline(always)]
fn record(sk: u64, ino: u64, fd: u32, syscall: u32, via: u32, func: u32) -> InFlightRecv {
    let id = bpf_get_current_pid_tgid();
    InFlightRecv {
        since_ns: now_ns(),
        sk,
        ino,
        pid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        syscall,
        netns: 0,
        via,
        func,
        _pad: 0,
        wait_since_ns: 0,
        waited_ns: 0,
        comm: [0; COMM_LEN],
    }
}

/// Fills in what [`record`] left out, in the context of the receiving task (at its return):
/// the netns and comm, and an inode the entry could not read from the `struct sock *` (a
/// kernel-function argument). False when a syscall's fd gave no socket (a `recvfrom` on a
/// pipe): not a socket receive, nothing to report.
#[inline(always)]
fn complete(entry: &mut InFlightRecv) -> bool {
    if entry.ino == 0 && entry.sk != 0 {
        entry.ino = sk_ino(entry.sk);
    }
    if entry.ino == 0 && entry.fd != NO_FD {
        return false;
    }
    entry.netns = task_netns(current_task());
    entry.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    true
}

#[inline(always)]
fn insert(tid: u32, rec: &InFlightRecv) {
    if INFLIGHT_RECV.insert(&tid, rec, 0).is_err() {
        count(Counter::InflightFull);
    }
}

/// Forgets the record of `tid` and emits a `RecvDoneEvent` when it was in flight at least
/// `RECV_REPORT_MIN_NS`. Most receives are shorter: for them only the start time is read, and
/// neither the return value nor the record is read, copied or sent (no per-receive ring-buffer
/// output).
#[inline(always)]
fn finish(tid: u32, rec: *mut InFlightRecv, ret: impl FnOnce() -> i64) {
    let now = now_ns();
    // SAFETY: map value owned by this tid, read before its removal.
    let since = unsafe { (*rec).since_ns };
    if now.saturating_sub(since) < RECV_REPORT_MIN_NS.load() {
        let _ = INFLIGHT_RECV.remove(&tid);
        return;
    }
    // SAFETY: as above; copied out before removal.
    let mut entry = unsafe { *rec };
    let _ = INFLIGHT_RECV.remove(&tid);
    if !complete(&mut entry) {
        return;
    }
    let ev = RecvDoneEvent { kind: EventKind::RecvDone as u32, _pad: 0, ts_ns: now, ret: ret(), entry };
    if EVENTS.output(&ev, 0).is_err() {
        count(Counter::RingbufDrops);
    }
}

// ---- tracepoint set -------------------------------------------------------------------------

/// Entry of `recvmsg`/`recvfrom`/`recvmmsg`: record tid -> time, fd, syscall, socket inode.
/// Their fd can only be a socket (or the syscall fails at once with `ENOTSOCK`/`EBADF`, and
/// the record goes at its exit), so the inode is read without the mode check of `read`.
#[tracepoint]
pub fn recv_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the syscall tracepoint format (identical for the four syscalls):
    // `__syscall_nr` (int) @8, `fd` (unsigned long / int widened) @16.
    let (nr, fd) = unsafe { (tp_field::<i32>(&ctx, 8), tp_field::<u64>(&ctx, 16) as u32) };
    let rec = record(0, current_socket_fd_ino(fd), fd, nr as u32, probe_via::TRACEPOINT, recv_func::SYSCALL);
    insert(rec.tid, &rec);
    0
}

/// Entry of `read`: record it only when the fd is a socket (`current->files->fdt->fd[fd]`,
/// `f_inode->i_mode`); every `read` of every file of the host passes here.
#[tracepoint]
pub fn recv_enter_read(ctx: TracePointContext) -> u32 {
    // SAFETY: as in `recv_enter`.
    let (nr, fd) = unsafe { (tp_field::<i32>(&ctx, 8), tp_field::<u64>(&ctx, 16) as u32) };
    let Some((sk, ino)) = current_fd_socket(fd) else { return 0 };
    let rec = record(sk, ino, fd, nr as u32, probe_via::TRACEPOINT, recv_func::SYSCALL);
    insert(rec.tid, &rec);
    0
}

/// Exit of a receive syscall: forget it, and report it if it had been in flight long enough.
#[tracepoint]
pub fn recv_exit(ctx: TracePointContext) -> u32 {
    let tid = current_tid();
    if RECV_REPORT_MIN_NS.load() == u64::MAX {
        // Nothing is ever reported (`hung`): one delete, no lookup, no clock read.
        let _ = INFLIGHT_RECV.remove(&tid);
        return 0;
    }
    // Every `read` of any file ends here: a miss (not a recorded socket receive) costs one lookup.
    let Some(rec) = INFLIGHT_RECV.get_ptr_mut(&tid) else { return 0 };
    // SAFETY: `ret` (long) @16 of the sys_exit format.
    finish(tid, rec, || unsafe { tp_field::<i64>(&ctx, 16) });
    0
}

// ---- kernel-function sets (fentry/fexit, kprobe/kretprobe) -----------------------------------

/// Entry of `__skb_recv_udp` / `__skb_recv_datagram`.
#[inline(always)]
fn func_enter(sk: u64, func: u32, via: u32) {
    let tid = current_tid();
    if let Some(rec) = INFLIGHT_RECV.get_ptr_mut(&tid) {
        // SAFETY: map value owned by this tid.
        unsafe {
            if (*rec).func == recv_func::SYSCALL && ((*rec).sk == sk || (*rec).sk == 0) {
                // Inside a recorded syscall on the same socket (or one whose socket is not
                // resolved yet, `recv_enter`): keep its fd and start time.
                (*rec).sk = sk;
                (*rec).func = func;
                (*rec).via = via;
                return;
            }
        }
    }
    let rec = record(sk, sk_ino(sk), NO_FD, u32::MAX, via, func);
    insert(tid, &rec);
}

/// Exit of `__skb_recv_udp` / `__skb_recv_datagram`: `skb` returned, `err` the `int *err` arg.
#[inline(always)]
fn func_exit(skb: u64, err: u64) {
    let tid = current_tid();
    let Some(rec) = INFLIGHT_RECV.get_ptr_mut(&tid) else { return };
    // SAFETY: map value owned by this tid; only this thread writes it.
    let (func, fd) = unsafe { ((*rec).func, (*rec).fd) };
    if func != recv_func::SKB_RECV_UDP && func != recv_func::SKB_RECV_DATAGRAM {
        return;
    }
    if fd != NO_FD {
        // A syscall record underneath: it reports at sys_exit.
        // SAFETY: as above.
        unsafe { (*rec).func = recv_func::SYSCALL };
        return;
    }
    finish(tid, rec, || {
        if skb != 0 {
            rd::<u32>(skb, off!(skb_len)).unwrap_or(0) as i64
        } else {
            -(rd::<i32>(err, 0).unwrap_or(0).unsigned_abs() as i64)
        }
    });
}

/// Entry of `__skb_wait_for_more_packets`: the task is about to sleep for a datagram.
#[inline(always)]
fn wait_enter(sk: u64, via: u32) {
    let tid = current_tid();
    let now = now_ns();
    if let Some(rec) = INFLIGHT_RECV.get_ptr_mut(&tid) {
        // SAFETY: map value owned by this tid.
        unsafe { (*rec).wait_since_ns = now };
        return;
    }
    let mut rec = record(sk, sk_ino(sk), NO_FD, u32::MAX, via, recv_func::SKB_WAIT);
    rec.wait_since_ns = now;
    insert(tid, &rec);
}

/// Exit of `__skb_wait_for_more_packets` with its return (0 woken, 1 shut down, `-errno`).
#[inline(always)]
fn wait_exit(ret: i64) {
    let tid = current_tid();
    let Some(rec) = INFLIGHT_RECV.get_ptr_mut(&tid) else { return };
    // SAFETY: map value owned by this tid.
    let func = unsafe {
        if (*rec).wait_since_ns != 0 {
            (*rec).waited_ns += now_ns().saturating_sub((*rec).wait_since_ns);
            (*rec).wait_since_ns = 0;
        }
        (*rec).func
    };
    if func == recv_func::SKB_WAIT {
        finish(tid, rec, || ret);
    }
}

/// fentry on `__skb_recv_udp(struct sock *sk, unsigned int flags, int *off, int *err)`.
#[fentry(function = "__skb_recv_udp")]
pub fn recv_fentry_udp(ctx: FEntryContext) -> u32 {
    func_enter(ctx.arg::<u64>(0), recv_func::SKB_RECV_UDP, probe_via::FENTRY);
    0
}

/// fexit on `__skb_recv_udp`: return value after the four arguments.
#[fexit(function = "__skb_recv_udp")]
pub fn recv_fexit_udp(ctx: FExitContext) -> u32 {
    func_exit(ctx.arg::<u64>(4), ctx.arg::<u64>(3));
    0
}

/// fentry on `__skb_recv_datagram(struct sock *sk, struct sk_buff_head *queue, unsigned int flags, int *off, int *err)`.
#[fentry(function = "__skb_recv_datagram")]
pub fn recv_fentry_dgram(ctx: FEntryContext) -> u32 {
    func_enter(ctx.arg::<u64>(0), recv_func::SKB_RECV_DATAGRAM, probe_via::FENTRY);
    0
}

/// fexit on `__skb_recv_datagram`: return value after the five arguments.
#[fexit(function = "__skb_recv_datagram")]
pub fn recv_fexit_dgram(ctx: FExitContext) -> u32 {
    func_exit(ctx.arg::<u64>(5), ctx.arg::<u64>(4));
    0
}

/// fentry on `__skb_wait_for_more_packets(struct sock *sk, struct sk_buff_head *queue, int *err, long *timeo_p, const struct sk_buff *skb)`.
#[fentry(function = "__skb_wait_for_more_packets")]
pub fn recv_fentry_wait(ctx: FEntryContext) -> u32 {
    wait_enter(ctx.arg::<u64>(0), probe_via::FENTRY);
    0
}

/// fexit on `__skb_wait_for_more_packets`: `int` return after the five arguments.
#[fexit(function = "__skb_wait_for_more_packets")]
pub fn recv_fexit_wait(ctx: FExitContext) -> u32 {
    wait_exit(ctx.arg::<u64>(5) as i32 as i64);
    0
}

/// kprobe on `__skb_recv_udp`; the `int *err` argument is kept for the kretprobe.
#[kprobe]
pub fn recv_kprobe_udp(ctx: ProbeContext) -> u32 {
    let tid = current_tid();
    let _ = RECV_ERR_PTR.insert(&tid, &ctx.arg::<u64>(3).unwrap_or(0), 0);
    func_enter(ctx.arg::<u64>(0).unwrap_or(0), recv_func::SKB_RECV_UDP, probe_via::KPROBE);
    0
}

/// kprobe on `__skb_recv_datagram`.
#[kprobe]
pub fn recv_kprobe_dgram(ctx: ProbeContext) -> u32 {
    let tid = current_tid();
    let _ = RECV_ERR_PTR.insert(&tid, &ctx.arg::<u64>(4).unwrap_or(0), 0);
    func_enter(ctx.arg::<u64>(0).unwrap_or(0), recv_func::SKB_RECV_DATAGRAM, probe_via::KPROBE);
    0
}

/// kretprobe on `__skb_recv_udp` and `__skb_recv_datagram` (one program, two attachments).
#[kretprobe]
pub fn recv_kretprobe_func(ctx: RetProbeContext) -> u32 {
    let tid = current_tid();
    // SAFETY: value copied out of the map.
    let err = unsafe { RECV_ERR_PTR.get(&tid).copied() }.unwrap_or(0);
    let _ = RECV_ERR_PTR.remove(&tid);
    func_exit(ctx.ret::<u64>(), err);
    0
}

/// kprobe on `__skb_wait_for_more_packets`.
#[kprobe]
pub fn recv_kprobe_wait(ctx: ProbeContext) -> u32 {
    wait_enter(ctx.arg::<u64>(0).unwrap_or(0), probe_via::KPROBE);
    0
}

/// kretprobe on `__skb_wait_for_more_packets`.
#[kretprobe]
pub fn recv_kretprobe_wait(ctx: RetProbeContext) -> u32 {
    wait_exit(ctx.ret::<u64>() as i32 as i64);
    0
}
