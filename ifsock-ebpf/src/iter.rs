//! BPF iterators: `iter/udp`, `iter/tcp` write one `SockRecord` per socket, `iter/task_file`
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
    file_kind, sock_flags, Counter, SockRecord, TaskFileRecord, IFNAME_LEN,
};

use crate::{
    kernel::{net_inum, off, rd, task_ids, task_netns, S_IFCHR, S_IFMT, S_IFSOCK, TUN_RDEV},
    maps::{count, TaskIds, OWNER_FILTER, OWNER_INODES, SOCK_FILTER, SOCK_FILTER_ADDRS, TASK_IDS},
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
