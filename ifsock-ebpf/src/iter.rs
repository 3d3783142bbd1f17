//! BPF iterators: `iter/udp`, `iter/tcp` write one `SockRecord` per socket (and, in the waiter
//! programs, one `WaitRecord` per entry of its wait queue), `iter/task_file`
//! one `TaskFileRecord` per socket or tun fd. Userspace reads them from the iterator's seq file.
//!
//! aya-ebpf has no `#[iter]` macro: the functions are placed in `iter/<target>` sections by hand.
//! `ctx->meta->seq` is read by direct dereference (a trusted BTF pointer); reading it with
//! `bpf_probe_read_kernel` would make the verifier reject `bpf_seq_write`. It is read once, at
//! each program's entry: the verifier checks every load through a BTF pointer with
//! `btf_nested_type_is_trusted`, a linear name search of vmlinux's BTF (64k types on 6.18), once
//! per verifier state that reaches the load. Read at the end, on every path, it made up ~10% of a
//! one-shot `sockets` run.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_seq_write};
use ifsock_common::{
    file_kind, sock_flags, wait_kind, Counter, SockRecord, TaskFileRecord, WaitRecord, EPOLL_WAITERS_MAX, IFNAME_LEN,
    WAIT_QUEUE_MAX,
};

use crate::{
    kernel::{net_inum, off, rd, sk_ino, task_ids, task_netns, S_IFCHR, S_IFMT, S_IFSOCK, TUN_RDEV},
    maps::{count, TaskIds, WalkState, EP_WORK_MAX, WALK, OWNER_FILTER, OWNER_INODES, SOCK_FILTER, SOCK_FILTER_ADDRS, TASK_IDS, WAKE_FUNCS},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV` (include/net/tcp_states.h): `iter/tcp` hands these
/// over as `struct inet_timewait_sock` / `struct request_sock`, which share only
/// `struct sock_common` with a full `struct sock`.
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// `struct bpf_iter_meta` (include/linux/bpf.h): only `seq` is used.
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// First two pointers shared by every iterator context: `meta`, then the object.
#[repr(C)]
struct IterCtxHead {
    meta: *const IterMeta,
    object: u64,
}

/// `ctx->meta->session_id`: one number per iterator session (one snapshot's walk).
#[inline(always)]
fn session_id(ctx: *mut c_void) -> u64 {
    // SAFETY: as in `entry_seq`; a scalar field.
    unsafe { core::ptr::read_volatile(&raw const (*(*ctx.cast::<IterCtxHead>()).meta).session_id) }
}

/// `ctx->meta->seq`, read where the program starts (see the module notes). Volatile, so that the
/// compiler does not move the load down to where it is used.
#[inline(always)]
fn entry_seq(ctx: *mut c_void) -> *mut c_void {
    // SAFETY: ctx is the iterator context; meta is a trusted non-NULL BTF pointer.
    unsafe { core::ptr::read_volatile(&raw const (*(*ctx.cast::<IterCtxHead>()).meta).seq) }
}

#[inline(always)]
fn seq_write<T>(seq: *mut c_void, record: &T) -> i32 {
    // SAFETY: record is a live stack value of size_of::<T>() bytes.
    let ret = unsafe {
        bpf_seq_write(
            seq.cast(),
            (record as *const T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if ret != 0 {
        // -EOVERFLOW: bpf_seq_read() discards this object's partial output and calls the
        // program again for the same object in the next read(): a retry, not a loss.
        count(Counter::IterRetries);
    }
    0
}

/// Socket cookie of `sk` (`bpf_get_socket_cookie()` on a trusted `sock_common`/`udp_sock` BTF
/// pointer, callable from tracing programs since 5.12).
///
/// `sk` must be the value the caller read from the context and checked for NULL: the verifier
/// types that register as a non-NULL BTF sock pointer. Re-reading the context field here gives a
/// `ptr_or_null` register that older verifiers (6.1) refuse for the helper; the check below
/// keeps such a re-read acceptable too.
#[inline(always)]
fn cookie(sk: u64) -> u64 {
    if sk == 0 {
        return 0;
    }
    // SAFETY: `sk` is the iterator's non-NULL socket pointer.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// A scalar field at `off` of a trusted BTF pointer the iterator hands over (`udp_sock *` for
/// `iter/udp`, `sock_common *` for `iter/tcp`, `task_struct *` for `iter/task_file`), loaded
/// through that pointer: the verifier checks the access against the struct's BTF once, at load,
/// and the JIT makes it a fault-safe load, so there is no `bpf_probe_read_kernel` call per field
/// per socket (`iter/udp` at 100k sockets: 298 → 259 ms for all of `sockets --json`). Scalars
/// only, and only fields the pointer's type covers (`iter/tcp`'s stops at `sock_common`): a
/// pointer field would cost the verifier a linear BTF search per visit (see the module notes).
/// Volatile, so that the compiler neither merges two fields into one wider load nor moves it.
#[inline(always)]
fn typed_field<T: Copy>(base: u64, off: u32) -> Option<T> {
    if off == ifsock_common::OFFSET_NONE {
        return None;
    }
    // SAFETY: `base` is the iterator's non-NULL object and `off` a field of type T in it, both
    // from the running kernel's BTF (the verifier refuses the program otherwise).
    Some(unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize).cast::<T>()) })
}

/// A scalar field of the socket: a [`typed_field`] load when the iterator's pointer type covers
/// it (`typed`: `iter/udp`'s `udp_sock *`), else a `bpf_probe_read_kernel` (`iter/tcp`'s
/// `sock_common *` stops short of `struct sock`). `typed` is a constant at every call, so each
/// program keeps one of the two.
#[inline(always)]
fn sock_field<T: Copy>(typed: bool, sk: u64, off: u32) -> Option<T> {
    if typed { typed_field::<T>(sk, off) } else { rd::<T>(sk, off) }
}

/// An IPv6 address field of `sock_common` (`struct in6_addr`, 8-byte aligned), as two [`typed_field`] loads.
#[inline(always)]
fn common_v6(sk: u64, off: u32) -> [u8; 16] {
    let (Some(hi), Some(lo)) = (typed_field::<u64>(sk, off), typed_field::<u64>(sk, off.wrapping_add(8))) else { return [0; 16] };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_ne_bytes());
    out[8..].copy_from_slice(&lo.to_ne_bytes());
    out
}

/// Fills a `SockRecord` from a `struct sock *`, or from the `struct sock_common` of a TCP mini
/// socket when `full` is false (TIME_WAIT, NEW_SYN_RECV: no `sk_socket`, queue or flags to read).
/// The filter ([`admitted`]) is applied as soon as the device and local address are read: a
/// socket it refuses costs four reads, not the whole record (and no cookie).
#[inline(always)]
fn sock_record(sk: u64, protocol: u8, uid: u32, full: bool, typed_sock: bool) -> Option<SockRecord> {
    let family = typed_field::<u16>(sk, off!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let bound_dev_if = typed_field::<u32>(sk, off!(skc_bound_dev_if)).unwrap_or(0);
    let mut laddr = [0u8; 16];
    if family == AF_INET {
        let l = typed_field::<u32>(sk, off!(skc_rcv_saddr)).unwrap_or(0);
        laddr[..4].copy_from_slice(&l.to_ne_bytes());
    } else {
        laddr = common_v6(sk, off!(skc_v6_rcv_saddr));
    }
    if !admitted(bound_dev_if, &laddr) {
        return None;
    }
    let mut rec = SockRecord {
        sk,
        cookie: cookie(sk),
        ino: 0,
        // Filled in by userspace: `iter/udp` and `iter/tcp` visit only the sockets of the netns
        // the iterator was created in (`seq_sk_match()`: `net_eq(sock_net(sk),
        // seq_file_net(seq))`), so two reads per socket would only repeat one number.
        netns: 0,
        uid,
        bound_dev_if,
        family,
        protocol,
        state: typed_field::<u8>(sk, off!(skc_state)).unwrap_or(0),
        lport: typed_field::<u16>(sk, off!(skc_num)).unwrap_or(0),
        rport: u16::from_be(typed_field::<u16>(sk, off!(skc_dport)).unwrap_or(0)),
        flags: 0,
        laddr,
        raddr: [0; 16],
        rx_queue: 0,
        drops: 0,
    };
    if family == AF_INET {
        let r = typed_field::<u32>(sk, off!(skc_daddr)).unwrap_or(0);
        rec.raddr[..4].copy_from_slice(&r.to_ne_bytes());
    } else {
        rec.raddr = common_v6(sk, off!(skc_v6_daddr));
    }
    if !full {
        rec.flags |= sock_flags::NO_SOCKET | sock_flags::MINI;
        return Some(rec);
    }
    let socket = rd::<u64>(sk, off!(sk_socket)).unwrap_or(0);
    if socket == 0 {
        rec.flags |= sock_flags::NO_SOCKET;
    } else {
        rec.ino = rd::<u64>(socket + off!(socket_to_inode) as u64, off!(inode_i_ino)).unwrap_or(0);
    }
    rec.rx_queue = sock_field::<u32>(typed_sock, sk, off!(sk_rcvq_len)).unwrap_or(0);
    rec.drops = sock_field::<u32>(typed_sock, sk, off!(sk_drops)).unwrap_or(0);
    // The flags word of `struct inet_sock` (`inet_flags`; `cmsg_flags` before 6.6).
    let word_off = off!(inet_pktinfo_word);
    let word: u64 = match off!(inet_pktinfo_size) {
        8 => sock_field::<u64>(typed_sock, sk, word_off).unwrap_or(0),
        4 => sock_field::<u32>(typed_sock, sk, word_off).unwrap_or(0) as u64,
        2 => sock_field::<u16>(typed_sock, sk, word_off).unwrap_or(0) as u64,
        1 => sock_field::<u8>(typed_sock, sk, word_off).unwrap_or(0) as u64,
        _ => 0,
    };
    let bit = off!(inet_pktinfo_bit);
    if bit < 64 && (word >> bit) & 1 == 1 {
        rec.flags |= sock_flags::PKTINFO;
    }
    if family == AF_INET6 {
        let pinet6 = rd::<u64>(sk, off!(inet_pinet6)).unwrap_or(0);
        let rxopt = rd::<u16>(pinet6, off!(ipv6_rxopt)).unwrap_or(0);
        let rxbit = off!(ipv6_rxinfo_bit);
        if rxbit < 16 && (rxopt >> rxbit) & 1 == 1 {
            rec.flags |= sock_flags::RECVPKTINFO6;
        }
    }
    Some(rec)
}

/// Whether the userspace filter ([`SOCK_FILTER`], off unless a snapshot of one interface is
/// running) lets this socket's record through.
#[inline(always)]
fn admitted(bound_dev_if: u32, laddr: &[u8; 16]) -> bool {
    match SOCK_FILTER.get(0) {
        // SAFETY: a map lookup by a key on the stack; the value is not kept.
        Some(f) => f.admits_with(bound_dev_if, laddr, |l| unsafe { SOCK_FILTER_ADDRS.get(l) }.is_some()),
        None => true,
    }
}

/// `iter/udp`: context `struct bpf_iter__udp { meta; udp_sk; uid_t uid; int bucket; }`.
#[unsafe(link_section = "iter/udp")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_udp_sockets(ctx: *mut c_void) -> i32 {
    let seq = entry_seq(ctx);
    // SAFETY: iterator context layout per include/net/udp.h / net/ipv4/udp.c.
    let (sk, uid) = unsafe { ((*ctx.cast::<IterCtxHead>()).object, *ctx.cast::<u8>().add(16).cast::<u32>()) };
    if sk == 0 {
        return 0;
    }
    match sock_record(sk, IPPROTO_UDP, uid, true, true) {
        Some(rec) => seq_write(seq, &rec),
        None => 0,
    }
}

/// `iter/tcp`: context `struct bpf_iter__tcp { meta; sk_common; uid_t uid; }`.
/// TIME_WAIT and NEW_SYN_RECV mini sockets are listed from their `sock_common` fields only
/// (`skc_state` is read first: the rest of `struct sock` does not exist for them).
#[unsafe(link_section = "iter/tcp")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_tcp_sockets(ctx: *mut c_void) -> i32 {
    let seq = entry_seq(ctx);
    // SAFETY: iterator context layout per net/ipv4/tcp_ipv4.c.
    let (sk, uid) = unsafe { ((*ctx.cast::<IterCtxHead>()).object, *ctx.cast::<u8>().add(16).cast::<u32>()) };
    if sk == 0 {
        return 0;
    }
    let state = typed_field::<u8>(sk, off!(skc_state)).unwrap_or(0);
    let full = state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
    match sock_record(sk, IPPROTO_TCP, uid, full, false) {
        Some(rec) => seq_write(seq, &rec),
        None => 0,
    }
}

/// `iter/task_file`: context `struct bpf_iter__task_file { meta; task; u32 fd; file; }`.
/// Threads sharing one fd table are visited once (the kernel skips duplicate `files`).
/// Writes socket and tun fds (the `tun` command and a teardown of a tun/tap).
#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_task_files(ctx: *mut c_void) -> i32 {
    task_file(ctx, true)
}

/// As [`iter_task_files`], socket fds only: what every socket snapshot's owner join needs. The
/// tun reads (ring indices, the device) are most of the other program's verification: 8,102
/// instructions and ~12 ms on 6.18, against ~2.5 ms for this one, on the start-up path of
/// `sockets`.
#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_task_sockets(ctx: *mut c_void) -> i32 {
    task_file(ctx, false)
}

/// One fd of an `iter/task_file` walk; `tun`: tun fds are written too.
#[inline(always)]
fn task_file(ctx: *mut c_void, tun: bool) -> i32 {
    let seq = entry_seq(ctx);
    // SAFETY: iterator context layout per kernel/bpf/task_iter.c.
    let (task, fd, file) = unsafe {
        let base = ctx.cast::<u8>();
        (
            (*ctx.cast::<IterCtxHead>()).object,
            *base.add(16).cast::<u32>(),
            *base.add(24).cast::<u64>(),
        )
    };
    if task == 0 || file == 0 {
        return 0;
    }
    // Classify the file first: most fds are neither sockets nor tun, and for those the task's
    // identity need not be read at all.
    let inode = rd::<u64>(file, off!(file_f_inode)).unwrap_or(0);
    let mode = rd::<u16>(inode, off!(inode_i_mode)).unwrap_or(0) & S_IFMT;
    let kind = if mode == S_IFSOCK {
        file_kind::SOCKET
    } else if tun && mode == S_IFCHR && rd::<u32>(inode, off!(inode_i_rdev)).unwrap_or(0) == TUN_RDEV {
        file_kind::TUN
    } else {
        return 0;
    };
    let ino = rd::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
    // A filtered snapshot wants the owners of a few sockets only: every other fd costs the
    // walk, no record.
    if OWNER_FILTER.get(0).is_some_and(|on| *on != 0) {
        // SAFETY: read-only lookup of a plain u64 key.
        if kind != file_kind::SOCKET || unsafe { OWNER_INODES.get(&ino) }.is_none() {
            return 0;
        }
    }
    let (pid, tid, comm, netns) = cached_task_ids(ctx, task);
    let mut rec = TaskFileRecord {
        kind,
        pid,
        tid,
        fd,
        ino,
        comm,
        netns,
        tun_ifindex: 0,
        tun_name: [0; IFNAME_LEN],
        tun_flags: 0,
        tun_queue: 0,
        tun_detached: 0,
        tun_backlog: 0,
        tun_ring_size: 0,
        tun_numqueues: 0,
        tun_numdisabled: 0,
        tun_owner: u32::MAX,
        tun_group: u32::MAX,
        tun_netns: 0,
    };
    if tun && kind == file_kind::TUN {
        let tfile = rd::<u64>(file, off!(file_private_data)).unwrap_or(0);
        if tfile != 0 {
            tun_file(tfile, &mut rec);
        }
    }
    seq_write(seq, &rec)
}

/// (tgid, tid, comm, netns inode) of the visited task, from [`TASK_IDS`] when this session's
/// previous record was of the same task (same pointer and tid), else read and cached.
#[inline(always)]
fn cached_task_ids(ctx: *mut c_void, task: u64) -> (u32, u32, [u8; ifsock_common::COMM_LEN], u32) {
    let session = session_id(ctx);
    // `ctx->task` is a trusted `task_struct *`: its tid is a direct load.
    let tid_now = typed_field::<u32>(task, off!(task_pid)).unwrap_or(0);
    let Some(cache) = TASK_IDS.get_ptr_mut(0) else {
        let (pid, tid, comm) = task_ids(task);
        return (pid, tid, comm, task_netns(task));
    };
    // SAFETY: this CPU's entry; the program runs with migration disabled.
    unsafe {
        if (*cache).session == session && (*cache).task == task && (*cache).tid == tid_now && tid_now != 0 {
            return ((*cache).pid, (*cache).tid, (*cache).comm, (*cache).netns);
        }
        let (pid, tid, comm) = task_ids(task);
        let netns = task_netns(task);
        *cache = TaskIds { session, task, tid, pid, netns, _pad: 0, comm };
        (pid, tid, comm, netns)
    }
}

/// Fills the tun fields from a `struct tun_file *` (drivers/net/tun.c).
#[inline(always)]
fn tun_file(tfile: u64, rec: &mut TaskFileRecord) {
    let attached = rd::<u64>(tfile, off!(tfile_tun)).unwrap_or(0);
    let detached = rd::<u64>(tfile, off!(tfile_detached)).unwrap_or(0);
    // `__tun_detach(tfile, false)` (TUNSETQUEUE IFF_DETACH_QUEUE) sets `detached` but leaves
    // `tfile->tun` pointing at the device: `detached` alone says the queue is disabled.
    rec.tun_detached = (detached != 0) as u32;
    rec.tun_queue = rd::<u16>(tfile, off!(tfile_queue_index)).unwrap_or(0) as u32;
    let ring_off = off!(tfile_tx_ring);
    if ring_off != ifsock_common::OFFSET_NONE {
        let ring = tfile + ring_off as u64;
        let producer = rd::<i32>(ring, off!(ring_producer)).unwrap_or(0);
        let head = rd::<i32>(ring, off!(ring_consumer_head)).unwrap_or(0);
        let size = rd::<i32>(ring, off!(ring_size)).unwrap_or(0);
        rec.tun_ring_size = size as u32;
        if size > 0 && producer >= 0 && head >= 0 {
            rec.tun_backlog = if producer > head {
                (producer - head) as u32
            } else if producer < head {
                (size - head + producer) as u32
            } else {
                // producer == consumer_head: empty, or full when the slot is occupied.
                let queue = rd::<u64>(ring, off!(ring_queue)).unwrap_or(0);
                let slot = rd::<u64>(queue + (producer as u64 & 0xffff) * 8, 0).unwrap_or(0);
                if slot != 0 { size as u32 } else { 0 }
            };
        }
    }
    let tun = if attached != 0 { attached } else { detached };
    if tun == 0 {
        return;
    }
    rec.tun_flags = rd::<u32>(tun, off!(tun_flags)).unwrap_or(0);
    rec.tun_numqueues = rd::<u32>(tun, off!(tun_numqueues)).unwrap_or(0);
    rec.tun_numdisabled = rd::<u32>(tun, off!(tun_numdisabled)).unwrap_or(0);
    rec.tun_owner = rd::<u32>(tun, off!(tun_owner)).unwrap_or(u32::MAX);
    rec.tun_group = rd::<u32>(tun, off!(tun_group)).unwrap_or(u32::MAX);
    let dev = rd::<u64>(tun, off!(tun_dev)).unwrap_or(0);
    rec.tun_ifindex = rd::<u32>(dev, off!(dev_ifindex)).unwrap_or(0);
    rec.tun_name = rd::<[u8; IFNAME_LEN]>(dev, off!(dev_name)).unwrap_or([0; IFNAME_LEN]);
    rec.tun_netns = net_inum(rd::<u64>(dev, off!(dev_nd_net)).unwrap_or(0));
}

/// Epoll nesting followed at most (`EP_MAX_NESTS`, fs/eventpoll.c: 4 on every kernel since 2.6.x).
const EP_MAX_NESTS: u32 = 4;
/// Pollers of one epoll file (`eventpoll.poll_wait`) visited at most: outer instances and
/// threads polling the epoll fd.
const EP_POLLERS_MAX: u32 = 8;

/// `iter/udp` waiter walk: one [`WaitRecord`] per entry of the socket's wait queue (see
/// [`walk_waiters`]).
#[unsafe(link_section = "iter/udp")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_udp_waiters(ctx: *mut c_void) -> i32 {
    let seq = entry_seq(ctx);
    // SAFETY: iterator context layout per net/ipv4/udp.c.
    let sk = unsafe { (*ctx.cast::<IterCtxHead>()).object };
    if sk != 0 {
        walk_waiters(seq, sk);
    }
    0
}

/// `iter/tcp` waiter walk; mini sockets (TIME_WAIT, NEW_SYN_RECV) have no wait queue.
#[unsafe(link_section = "iter/tcp")]
#[unsafe(no_mangle)]
pub extern "C" fn iter_tcp_waiters(ctx: *mut c_void) -> i32 {
    let seq = entry_seq(ctx);
    // SAFETY: iterator context layout per net/ipv4/tcp_ipv4.c.
    let sk = unsafe { (*ctx.cast::<IterCtxHead>()).object };
    if sk == 0 {
        return 0;
    }
    let state = typed_field::<u8>(sk, off!(skc_state)).unwrap_or(0);
    if state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV {
        walk_waiters(seq, sk);
    }
    0
}

/// The `bpf_loop` (5.17+) context of a waiter walk: the seq file alone (the verifier's trusted
/// pointer survives the spill to the stack; in a map it would not). The walk's state is in
/// [`WALK`]. Callbacks are verified once each, however many entries they visit: unrolled
/// loops over 64 entries with five kinds each went past the verifier's million instructions.
#[repr(C)]
struct LoopCtx {
    seq: *mut c_void,
}

/// This CPU's walk state.
#[inline(always)]
fn walk_state() -> Option<&'static mut WalkState> {
    // SAFETY: this CPU's entry; an iterator program runs with migration disabled and its
    // callbacks on the same CPU.
    WALK.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The syscall number `task` entered the kernel with: `task_pt_regs(task)->orig_ax` (x86-64:
/// the `pt_regs` at the top of the kernel stack, see `KernelOffsets::stack_syscall_nr`); -1
/// when unknown (other architectures, a fault, or the task is not in a syscall); and its first
/// argument (`pt_regs.di`), -1 when unread.
#[inline(always)]
fn task_syscall(task: u64) -> (i32, i32) {
    let stack = rd::<u64>(task, off!(task_stack)).unwrap_or(0);
    let nr = rd::<i64>(stack, off!(stack_syscall_nr)).map_or(-1, |nr| nr as i32);
    (nr, rd::<i64>(stack, off!(stack_syscall_arg0)).map_or(-1, |a| a as i32))
}

/// Writes `rec` for `task` (kind as set by the caller), as a [`wait_kind::GONE`] record when
/// the pointer leads to no thread id (the entry is being torn down, or the task exits).
#[inline(never)]
fn emit_task(seq: *mut c_void, rec: &mut WaitRecord, task: u64) {
    rec.pid = rd::<u32>(task, off!(task_tgid)).unwrap_or(0);
    rec.tid = rd::<u32>(task, off!(task_pid)).unwrap_or(0);
    let comm_off = off!(task_comm);
    if task != 0 && comm_off != ifsock_common::OFFSET_NONE {
        // SAFETY: a fault-safe read into the record's own 16 bytes (zeroed by the helper on a fault).
        let _ = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                rec.comm.as_mut_ptr().cast(),
                ifsock_common::COMM_LEN as u32,
                (task + comm_off as u64) as *const c_void,
            )
        };
    }
    if rec.pid == 0 || rec.tid == 0 {
        rec.kind = wait_kind::GONE;
        rec.syscall = -1;
        rec.arg0 = -1;
    } else {
        (rec.syscall, rec.arg0) = task_syscall(task);
    }
    seq_write(seq, rec);
}

/// `epitem.ep` and `epitem.ffd.fd` of the `eppoll_entry` whose `wait` is `entry`.
#[inline(always)]
fn epitem_of(entry: u64) -> (u64, i32) {
    let epi = rd::<u64>(entry.wrapping_sub(off!(epe_wait) as u64), off!(epe_base)).unwrap_or(0);
    (rd::<u64>(epi, off!(epi_ep)).unwrap_or(0), rd::<i32>(epi, off!(epi_fd)).unwrap_or(-1))
}

/// Moves `w` to the next entry.
#[inline(always)]
fn advance(w: &mut WalkState) -> i64 {
    w.pos = rd::<u64>(w.pos, 0).unwrap_or(0);
    w.seen += 1;
    0
}

/// The wait queue entry `w.pos` is in, or `None` (stop) at the end of the list.
#[inline(always)]
fn current_entry(w: &WalkState) -> Option<u64> {
    if w.pos == w.head || w.pos == 0 {
        return None;
    }
    Some(w.pos.wrapping_sub(off!(wqe_entry) as u64))
}

/// The seq file of a callback's context.
#[inline(always)]
fn ctx_seq(ctx: *mut c_void) -> *mut c_void {
    // SAFETY: `ctx` is the caller's `LoopCtx` on its stack.
    unsafe { (*ctx.cast::<LoopCtx>()).seq }
}

/// Whether the entry at `entry` (wake function `func`) is still queued on `w.queue`: a
/// `poll_table_entry` (`pollwake`) and an `eppoll_entry` (`ep_poll_callback`) name the head
/// they are on (`wait_address`, `whead`). The walk holds no lock: an entry freed under it and
/// reused on another socket's queue would otherwise put that queue's waiter on this socket.
/// Other entries (on a sleeping task's stack) carry no back-pointer and are taken as read.
#[inline(always)]
fn still_queued(w: &WalkState, entry: u64, func: u64) -> bool {
    let (at, off) = if func == w.funcs.pollwake {
        (entry.wrapping_sub(off!(pte_wait) as u64), off!(pte_wait_address))
    } else if func == w.funcs.ep_poll_callback {
        (entry.wrapping_sub(off!(epe_wait) as u64), off!(epe_whead))
    } else {
        return true;
    };
    off == ifsock_common::OFFSET_NONE || rd::<u64>(at, off).unwrap_or(0) == w.queue
}

/// Points `w` at the list of the queue head whose `list_head` is at `head`.
#[inline(always)]
fn start_list(w: &mut WalkState, head: u64) {
    w.head = head;
    w.queue = head.wrapping_sub(off!(wqh_head) as u64);
    w.pos = rd::<u64>(head, 0).unwrap_or(0);
    w.seen = 0;
}

/// One entry of a socket's queue (`bpf_loop` callback).
#[inline(never)]
extern "C" fn socket_entry(_index: u32, ctx: *mut c_void) -> i64 {
    let seq = ctx_seq(ctx);
    let Some(w) = walk_state() else { return 1 };
    let Some(entry) = current_entry(w) else { return 1 };
    let func = rd::<u64>(entry, off!(wqe_func)).unwrap_or(0);
    let private = rd::<u64>(entry, off!(wqe_private)).unwrap_or(0);
    let f = w.funcs;
    if !still_queued(w, entry, func) {
        // The walk left this socket's queue: what follows is another queue's.
        w.rec.kind = wait_kind::GONE;
        w.rec.pid = 0;
        w.rec.tid = 0;
        seq_write(seq, &w.rec);
        return 1;
    }
    w.rec.func = func;
    w.rec.ep = 0;
    w.rec.tfd = -1;
    w.rec.depth = 0;
    w.rec.pid = 0;
    w.rec.tid = 0;
    w.rec.syscall = -1;
    w.rec.arg0 = -1;
    if func == 0 {
        // An entry torn down under the walk: nothing to name.
    } else if func == f.receiver || func == f.woken || func == f.autoremove || func == f.default {
        w.rec.kind = wait_kind::TASK;
        emit_task(seq, &mut w.rec, private);
    } else if func == f.pollwake {
        w.rec.kind = wait_kind::POLL;
        emit_task(seq, &mut w.rec, rd::<u64>(private, off!(pwq_polling_task)).unwrap_or(0));
    } else if func == f.ep_poll_callback {
        let (ep, tfd) = epitem_of(entry);
        if !push_ep(w, ep, tfd, 1) {
            w.rec.kind = wait_kind::TRUNCATED;
            w.rec.ep = ep;
            seq_write(seq, &w.rec);
        }
    } else {
        w.rec.kind = wait_kind::UNKNOWN;
        seq_write(seq, &w.rec);
    }
    advance(w)
}

/// One thread on an epoll instance's own queue (`eventpoll.wq`: `ep_poll()` queues each thread
/// in `epoll_wait` with `private` = current; `bpf_loop` callback).
#[inline(never)]
extern "C" fn epoll_thread(_index: u32, ctx: *mut c_void) -> i64 {
    let seq = ctx_seq(ctx);
    let Some(w) = walk_state() else { return 1 };
    let Some(entry) = current_entry(w) else { return 1 };
    w.rec.func = rd::<u64>(entry, off!(wqe_func)).unwrap_or(0);
    w.rec.kind = wait_kind::EPOLL;
    emit_task(seq, &mut w.rec, rd::<u64>(entry, off!(wqe_private)).unwrap_or(0));
    advance(w)
}

/// One poller of an epoll file (`eventpoll.poll_wait`): an outer instance (`ep_poll_callback`)
/// joins the work list one level deeper, up to [`EP_MAX_NESTS`]; a thread in poll/select on the
/// epoll fd is a [`wait_kind::POLL`] record (`bpf_loop` callback).
#[inline(never)]
extern "C" fn epoll_poller(_index: u32, ctx: *mut c_void) -> i64 {
    let seq = ctx_seq(ctx);
    let Some(w) = walk_state() else { return 1 };
    let Some(entry) = current_entry(w) else { return 1 };
    let func = rd::<u64>(entry, off!(wqe_func)).unwrap_or(0);
    if !still_queued(w, entry, func) {
        return 1;
    }
    if func != 0 && func == w.funcs.ep_poll_callback {
        let (outer, _) = epitem_of(entry);
        if w.depth < EP_MAX_NESTS && outer != 0 {
            // The socket's own fd (`tfd` of the innermost item) stays in the record.
            let (tfd, depth) = (w.rec.tfd, w.depth + 1);
            let _ = push_ep(w, outer, tfd, depth);
        }
    } else if func != 0 && func == w.funcs.pollwake {
        let private = rd::<u64>(entry, off!(wqe_private)).unwrap_or(0);
        w.rec.kind = wait_kind::POLL;
        w.rec.func = func;
        emit_task(seq, &mut w.rec, rd::<u64>(private, off!(pwq_polling_task)).unwrap_or(0));
    }
    advance(w)
}

/// Walks `sk->sk_wq->wait` (the queue every sleeping receiver, poller and epoll instance of the
/// socket is on) without its lock: entries come and go under the walk, so every read is
/// fault-safe, the walk is bounded ([`WAIT_QUEUE_MAX`], then a [`wait_kind::TRUNCATED`] record)
/// and a task that leads to no tid is a [`wait_kind::GONE`] record. Entries are classified by
/// `wait_queue_entry.func` against [`WAKE_FUNCS`] ([`socket_entry`]):
/// - `receiver_wake_function`, `woken_wake_function`, `autoremove_wake_function`,
///   `default_wake_function`: `private` is the task ([`wait_kind::TASK`]);
/// - `pollwake`: `private` is the `struct poll_wqueues` of a poll/select, `polling_task` the thread;
/// - `ep_poll_callback`: the entry is `eppoll_entry.wait`; its `base` (`struct epitem`) names the
///   instance (`ep`), whose own queues are walked after this one ([`epoll_instance`]);
/// - anything else (`io_poll_wake` included): [`wait_kind::UNKNOWN`] with the function.
#[inline(always)]
fn walk_waiters(seq: *mut c_void, sk: u64) {
    let Some(funcs) = WAKE_FUNCS.get(0) else { return };
    if funcs.pollwake == 0 || funcs.receiver == 0 {
        return;
    }
    let wq = rd::<u64>(sk, off!(sk_wq)).unwrap_or(0);
    let head_off = off!(sk_wq_head);
    if wq == 0 || head_off == ifsock_common::OFFSET_NONE || off!(wqe_entry) == ifsock_common::OFFSET_NONE {
        return;
    }
    let Some(w) = walk_state() else { return };
    w.funcs = *funcs;
    w.n = 0;
    start_list(w, wq + head_off as u64);
    w.depth = 0;
    w.rec.cookie = cookie(sk);
    w.rec.ino = sk_ino(sk);
    let mut lctx = LoopCtx { seq };
    run_loop(WAIT_QUEUE_MAX, socket_entry, &mut lctx);
    let Some(w) = walk_state() else { return };
    if truncated(w, WAIT_QUEUE_MAX) {
        w.rec.kind = wait_kind::TRUNCATED;
        w.rec.func = 0;
        w.rec.ep = 0;
        w.rec.pid = 0;
        w.rec.tid = 0;
        seq_write(seq, &w.rec);
    }
    run_loop(EP_WORK_MAX, epoll_instance, &mut lctx);
}

/// `bpf_loop(n, f, ctx)`.
#[inline(always)]
fn run_loop(n: u32, f: extern "C" fn(u32, *mut c_void) -> i64, ctx: &mut LoopCtx) {
    // SAFETY: `f` is one of this file's callbacks, taking the `LoopCtx` it is handed.
    let _ = unsafe { aya_ebpf::helpers::generated::bpf_loop(n, f as *mut c_void, (ctx as *mut LoopCtx).cast(), 0) };
}

/// Whether the walk stopped at its bound with entries left.
#[inline(always)]
fn truncated(w: &WalkState, bound: u32) -> bool {
    w.seen >= bound && w.pos != w.head && w.pos != 0
}

/// Epoll instance `k` of the work list (`bpf_loop` callback): its threads (`eventpoll.wq`,
/// [`epoll_thread`]), then its pollers (`eventpoll.poll_wait`, [`epoll_poller`]); one
/// [`wait_kind::EPOLL_IDLE`] record when it has neither.
#[inline(never)]
extern "C" fn epoll_instance(k: u32, ctx: *mut c_void) -> i64 {
    let seq = ctx_seq(ctx);
    let (wq_off, poll_off) = (off!(ep_wq_head), off!(ep_poll_wait_head));
    let Some(w) = walk_state() else { return 1 };
    if k >= w.n || k >= EP_WORK_MAX || wq_off == ifsock_common::OFFSET_NONE || poll_off == ifsock_common::OFFSET_NONE {
        return 1;
    }
    // Masked after a volatile reload: with `k` known below EP_WORK_MAX the compiler drops the
    // mask and indexes with a register the verifier saw unbounded.
    // SAFETY: a read of a local.
    let slot = (unsafe { core::ptr::read_volatile(&k) } & (EP_WORK_MAX - 1)) as usize;
    let ep = w.ep[slot];
    w.rec.ep = ep;
    w.rec.tfd = w.tfd[slot];
    w.rec.depth = w.ep_depth[slot];
    w.depth = w.ep_depth[slot];
    start_list(w, ep + wq_off as u64);
    let mut lctx = LoopCtx { seq };
    run_loop(EPOLL_WAITERS_MAX, epoll_thread, &mut lctx);
    let Some(w) = walk_state() else { return 1 };
    let threads = w.seen;
    w.rec.func = 0;
    if truncated(w, EPOLL_WAITERS_MAX) {
        w.rec.kind = wait_kind::TRUNCATED;
        seq_write(seq, &w.rec);
    }
    start_list(w, ep + poll_off as u64);
    run_loop(EP_POLLERS_MAX, epoll_poller, &mut lctx);
    let Some(w) = walk_state() else { return 1 };
    if threads == 0 && w.seen == 0 {
        w.rec.kind = wait_kind::EPOLL_IDLE;
        w.rec.func = 0;
        w.rec.pid = 0;
        w.rec.tid = 0;
        w.rec.syscall = -1;
        w.rec.arg0 = -1;
        seq_write(seq, &w.rec);
    }
    0
}

/// Appends an epoll instance to the work list; false when it is full. An instance listed
/// already (the socket added under two fds, or reached twice through nesting) is not added
/// again.
#[inline(always)]
fn push_ep(w: &mut WalkState, ep: u64, tfd: i32, depth: u32) -> bool {
    if ep == 0 {
        return true;
    }
    let n = w.n;
    let mut j = 0;
    while j < EP_WORK_MAX {
        if j < n && w.ep[j as usize] == ep {
            return true;
        }
        j += 1;
    }
    if n >= EP_WORK_MAX {
        return false;
    }
    let slot = (n & (EP_WORK_MAX - 1)) as usize;
    w.ep[slot] = ep;
    w.tfd[slot] = tfd;
    w.ep_depth[slot] = depth;
    w.n = n + 1;
    true
}
