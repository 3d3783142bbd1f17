//! Receive tracking for `hung`, `watch`'s `receiver_stranded` and `teardown`: a receive on a
//! socket is recorded in its thread's slot of `INFLIGHT_SLOTS` (an array indexed by tid; a
//! tid beyond it goes to the hash map `INFLIGHT_RECV`) when it starts and forgotten when it
//! returns; one that was in flight at least `RECV_REPORT_MIN_NS` emits a `RecvDoneEvent` (none
//! for `hung`, which sets it to `u64::MAX`; `teardown` 1 ms), shorter ones send nothing.
//!
//! A slot is written only by its own thread (the index is the global tid, unique among live
//! threads), so no lock or compare-and-swap is needed: [`publish`] writes the record in place
//! under a one-writer seqlock (`seq` odd while writing), and forgetting is one store of
//! `since_ns = 0`. The hash map cost ~110 ns per insert and per delete
//! (`kernel.bpf_stats_enabled`, 6.18), on every receive of the host.
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
//! fd, syscall and socket inode, written into its slot. `recvmsg`/`recvfrom`/`recvmmsg` take
//! only sockets, so their fd is resolved without checks (`current_socket_fd_ino`: three direct
//! loads through the BTF task pointer, three helper reads); `read` checks the inode mode
//! (`current_fd_socket`), because every `read` of every file enters here and only socket reads
//! are recorded. The time is read once per tick per CPU for `hung` ([`entry_ns`]). Measured on
//! 6.18 (`recv_enter`, `kernel.bpf_stats_enabled`, 200,000 `recvfrom`s, an empty program
//! 56–60 ns): 350–390 ns a run with the fd resolved by six helper reads, a record built on the
//! stack and `bpf_ktime_get_ns()` per entry; 225–250 ns now. The inode is taken at entry, not
//! later: the fd can be closed by another thread while the receive waits (seed 003), and the
//! socket then has no fd left to find it by (resolving it costs ~90 ns a run of that). The
//! netns and comm are not recorded at entry: a receive that reports at exit fills them in then
//! ([`complete`]), and userspace completes a record it reads while the receive is still in
//! flight from procfs (`InFlight::complete`: `/proc/PID/task/TID/{comm,ns/net}`).
//!
//! When both kinds are attached (a kernel-function probe missing for one function), a kernel
//! function entered inside a recorded syscall refines that record instead of replacing it.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext as _,
};
use ifsock_common::{probe_via, recv_func, Counter, EventKind, InFlightRecv, RecvDoneEvent, COMM_LEN, NO_FD};

use crate::{
    kernel::{current_fd_socket, current_socket_fd_ino, current_task, off, rd, sk_ino, task_netns},
    maps::{count, EVENTS, INFLIGHT_RECV, INFLIGHT_SLOTS, RECV_ERR_PTR, TICK_CLOCK},
};

#[unsafe(no_mangle)]
static RECV_REPORT_MIN_NS: aya_ebpf::Global<u64> = aya_ebpf::Global::new(u64::MAX);

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The entry time of a receive, CLOCK_MONOTONIC ns. [`now_ns`] when receives are timed at their
/// exit (`RECV_REPORT_MIN_NS` set: `teardown`). Else (`hung`, `watch`, `abort`, `agent`, which
/// only compare it with the time of a later query), the clock as first read in the current jiffy on this CPU
/// (`TICK_CLOCK`): `bpf_jiffies64()` is a load, and `bpf_ktime_get_ns()` is called once per
/// CPU per tick instead of once per receive, so the time is early by less than one tick
/// (`1/CONFIG_HZ` s: 4 ms at 250 Hz) and never late. Reading the clock cost ~85 ns a call on the
/// 6.18 VM this was measured on (`kernel.bpf_stats_enabled`, 200,000 `recvfrom`s: 175 ns a run
/// with it, 93 ns with `bpf_jiffies64()`), where reading the TSC is that slow;
/// `bpf_ktime_get_coarse_ns()` would do without the cache but is refused to tracing programs.
/// Tracing programs do not nest on one CPU (`bpf_prog_active`), so the cache is not torn.
#[inline(always)]
fn entry_ns() -> u64 {
    if RECV_REPORT_MIN_NS.load() != u64::MAX {
        return now_ns();
    }
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(clock) = TICK_CLOCK.get_ptr_mut(0) else { return now_ns() };
    // SAFETY: this CPU's value; no other program runs on this CPU until this one returns.
    unsafe {
        if (*clock).jiffies == jiffies && (*clock).ns != 0 {
            return (*clock).ns;
        }
        let ns = now_ns();
        (*clock).ns = ns;
        (*clock).jiffies = jiffies;
        ns
    }
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

/// What an entry probe knows of a receive. The time, pid and tid come from helpers in
/// [`enter`]; the netns and comm stay empty (0, zeros) for [`complete`] or userspace to fill in:
/// they cost a helper and three faultable reads (`task->nsproxy->net_ns->ns.inum`) that most
/// receives, which return at once, never use.
#[derive(Clone, Copy)]
struct Entry {
    sk: u64,
    ino: u64,
    fd: u32,
    syscall: u32,
    via: u32,
    func: u32,
    wait_since_ns: u64,
}

/// Fills in what [`enter`] left out, in the context of the receiving task (at its return):
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

/// Records the receive the current thread starts: in its slot of `INFLIGHT_SLOTS`, written in
/// place ([`publish`]: no record is built on the stack and copied, which cost two `memset`
/// subprogram calls a receive), or in the hash map when the tid is beyond the slots
/// (`kernel.pid_max` raised past them).
#[inline(always)]
fn enter(e: Entry) {
    let id = bpf_get_current_pid_tgid();
    let (pid, tid) = ((id >> 32) as u32, id as u32);
    let since_ns = entry_ns();
    match INFLIGHT_SLOTS.get_ptr_mut(tid) {
        // SAFETY: the slot of this tid; only this thread writes it.
        Some(slot) => unsafe { publish(slot, since_ns, pid, tid, &e) },
        None => {
            let rec = InFlightRecv {
                since_ns,
                sk: e.sk,
                ino: e.ino,
                pid,
                tid,
                fd: e.fd,
                syscall: e.syscall,
                netns: 0,
                via: e.via,
                func: e.func,
                seq: 0,
                wait_since_ns: e.wait_since_ns,
                waited_ns: 0,
                comm: [0; COMM_LEN],
            };
            if INFLIGHT_RECV.insert(&tid, &rec, 0).is_err() {
                count(Counter::InflightFull);
            }
        }
    }
}

/// Writes a record into a slot under its sequence word (`InFlightRecv::seq`, a seqlock with one
/// writer): `seq` odd while the fields change, `since_ns` set last, `seq` even again after. A
/// reader keeps a copy only when it saw the same even `seq` before and after copying and a
/// non-zero `since_ns` in the copy: `since_ns` alone cannot tell two receives of one thread
/// apart, since [`entry_ns`] gives every entry of a tick on a CPU the same time. Every store is
/// volatile (kept in program order by the compiler; the JIT keeps them in order, and x86-64 and
/// arm64 with the reader's barriers make them visible in order).
///
/// # Safety
/// `slot` is the `INFLIGHT_SLOTS` value of the current thread's tid.
#[inline(always)]
unsafe fn publish(slot: *mut InFlightRecv, since_ns: u64, pid: u32, tid: u32, e: &Entry) {
    use core::ptr::{addr_of_mut, write_volatile};
    // SAFETY: per the caller; plain field stores into the map value.
    unsafe {
        let seq = begin_write(slot);
        write_volatile(addr_of_mut!((*slot).since_ns), 0);
        write_volatile(addr_of_mut!((*slot).sk), e.sk);
        write_volatile(addr_of_mut!((*slot).ino), e.ino);
        write_volatile(addr_of_mut!((*slot).pid), pid);
        write_volatile(addr_of_mut!((*slot).tid), tid);
        write_volatile(addr_of_mut!((*slot).fd), e.fd);
        write_volatile(addr_of_mut!((*slot).syscall), e.syscall);
        write_volatile(addr_of_mut!((*slot).netns), 0);
        write_volatile(addr_of_mut!((*slot).via), e.via);
        write_volatile(addr_of_mut!((*slot).func), e.func);
        write_volatile(addr_of_mut!((*slot).wait_since_ns), e.wait_since_ns);
        write_volatile(addr_of_mut!((*slot).waited_ns), 0);
        // Two 8-byte stores: an array store would be a `memset` call.
        let comm = addr_of_mut!((*slot).comm).cast::<u64>();
        write_volatile(comm, 0);
        write_volatile(comm.add(1), 0);
        write_volatile(addr_of_mut!((*slot).since_ns), since_ns);
        end_write(slot, seq);
    }
}

/// Makes `rec`'s sequence word odd before its thread changes it in place; returns the word for
/// [`end_write`]. On a hash map value (a tid beyond the slots) it is harmless: nothing reads it.
///
/// # Safety
/// `rec` is the record of the current thread.
#[inline(always)]
unsafe fn begin_write(rec: *mut InFlightRecv) -> u32 {
    use core::ptr::{addr_of_mut, read_volatile, write_volatile};
    // SAFETY: per the caller.
    unsafe {
        let seq = read_volatile(addr_of_mut!((*rec).seq)) | 1;
        write_volatile(addr_of_mut!((*rec).seq), seq);
        seq
    }
}

/// Makes `rec`'s sequence word even again after [`begin_write`].
///
/// # Safety
/// As [`begin_write`].
#[inline(always)]
unsafe fn end_write(rec: *mut InFlightRecv, seq: u32) {
    // SAFETY: per the caller.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).seq), seq.wrapping_add(1)) }
}

/// The receive `tid` has in flight, if any: its slot while `since_ns` is set, else (a tid
/// beyond the slots) its hash map entry.
#[inline(always)]
fn lookup(tid: u32) -> Option<*mut InFlightRecv> {
    match INFLIGHT_SLOTS.get_ptr_mut(tid) {
        // SAFETY: the slot of this tid; only this thread writes it.
        Some(slot) => (unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*slot).since_ns)) } != 0).then_some(slot),
        None => INFLIGHT_RECV.get_ptr_mut(&tid),
    }
}

/// Forgets the receive `tid` has in flight: one store (`since_ns = 0`, skipped when the slot is
/// already free: every `read` of any file exits here), or a hash map delete beyond the slots.
#[inline(always)]
fn forget(tid: u32) {
    match INFLIGHT_SLOTS.get_ptr_mut(tid) {
        // SAFETY: the slot of this tid; only this thread writes it.
        Some(slot) => unsafe {
            let since = core::ptr::addr_of_mut!((*slot).since_ns);
            if core::ptr::read_volatile(since) != 0 {
                core::ptr::write_volatile(since, 0);
            }
        },
        None => {
            let _ = INFLIGHT_RECV.remove(&tid);
        }
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
        forget(tid);
        return;
    }
    // SAFETY: as above; copied out before removal.
    let mut entry = unsafe { *rec };
    forget(tid);
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
    let ino = current_socket_fd_ino(fd);
    enter(Entry { sk: 0, ino, fd, syscall: nr as u32, via: probe_via::TRACEPOINT, func: recv_func::SYSCALL, wait_since_ns: 0 });
    0
}

/// Entry of `read`: record it only when the fd is a socket (`current->files->fdt->fd[fd]`,
/// `f_inode->i_mode`); every `read` of every file of the host passes here.
#[tracepoint]
pub fn recv_enter_read(ctx: TracePointContext) -> u32 {
    // SAFETY: as in `recv_enter`.
    let (nr, fd) = unsafe { (tp_field::<i32>(&ctx, 8), tp_field::<u64>(&ctx, 16) as u32) };
    let Some((sk, ino)) = current_fd_socket(fd) else { return 0 };
    enter(Entry { sk, ino, fd, syscall: nr as u32, via: probe_via::TRACEPOINT, func: recv_func::SYSCALL, wait_since_ns: 0 });
    0
}

/// Exit of a receive syscall: forget it, and report it if it had been in flight long enough.
#[tracepoint]
pub fn recv_exit(ctx: TracePointContext) -> u32 {
    let tid = current_tid();
    if RECV_REPORT_MIN_NS.load() == u64::MAX {
        // Nothing is ever reported (`hung`): forget it, no clock read.
        forget(tid);
        return 0;
    }
    // Every `read` of any file ends here: a miss (not a recorded socket receive) costs one lookup.
    let Some(rec) = lookup(tid) else { return 0 };
    // SAFETY: `ret` (long) @16 of the sys_exit format.
    finish(tid, rec, || unsafe { tp_field::<i64>(&ctx, 16) });
    0
}

// ---- kernel-function sets (fentry/fexit, kprobe/kretprobe) -----------------------------------

/// Entry of `__skb_recv_udp` / `__skb_recv_datagram`.
#[inline(always)]
fn func_enter(sk: u64, func: u32, via: u32) {
    let tid = current_tid();
    if let Some(rec) = lookup(tid) {
        // SAFETY: map value owned by this tid.
        unsafe {
            if (*rec).func == recv_func::SYSCALL && ((*rec).sk == sk || (*rec).sk == 0) {
                // Inside a recorded syscall on the same socket (or one whose socket is not
                // resolved yet, `recv_enter`): keep its fd and start time.
                let seq = begin_write(rec);
                (*rec).sk = sk;
                (*rec).func = func;
                (*rec).via = via;
                end_write(rec, seq);
                return;
            }
        }
    }
    enter(Entry { sk, ino: sk_ino(sk), fd: NO_FD, syscall: u32::MAX, via, func, wait_since_ns: 0 });
}

/// Exit of `__skb_recv_udp` / `__skb_recv_datagram`: `skb` returned, `err` the `int *err` arg.
#[inline(always)]
fn func_exit(skb: u64, err: u64) {
    let tid = current_tid();
    let Some(rec) = lookup(tid) else { return };
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
    if let Some(rec) = lookup(tid) {
        // SAFETY: map value owned by this tid.
        unsafe {
            let seq = begin_write(rec);
            (*rec).wait_since_ns = now;
            end_write(rec, seq);
        }
        return;
    }
    enter(Entry { sk, ino: sk_ino(sk), fd: NO_FD, syscall: u32::MAX, via, func: recv_func::SKB_WAIT, wait_since_ns: now });
}

/// Exit of `__skb_wait_for_more_packets` with its return (0 woken, 1 shut down, `-errno`).
#[inline(always)]
fn wait_exit(ret: i64) {
    let tid = current_tid();
    let Some(rec) = lookup(tid) else { return };
    // SAFETY: map value owned by this tid.
    let func = unsafe {
        if (*rec).wait_since_ns != 0 {
            let seq = begin_write(rec);
            (*rec).waited_ns += now_ns().saturating_sub((*rec).wait_since_ns);
            (*rec).wait_since_ns = 0;
            end_write(rec, seq);
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
