//! `#[repr(C)]` records shared by ifsock's eBPF programs (`ifsock-ebpf`) and userspace (`ifsock`).
//!
//! Every record has a fixed size and layout so the kernel side can write it with
//! `bpf_seq_write` (iterators) or into the ring buffer, and userspace can read it back with
//! [`read_record`]. Ring-buffer events start with a `u32` [`EventKind`] so userspace can dispatch
//! on the first four bytes.
#![no_std]

/// Name of the ring buffer map carrying [`LinkRequestEvent`], [`RecvDoneEvent`] and [`SendErrorEvent`].
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU `u64` counter array indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the hash map `tid (u32) -> InFlightRecv` holding receives that have not returned
/// yet, for threads whose tid is beyond [`MAP_INFLIGHT_SLOTS`] (the `kernel.pid_max` of most
/// hosts is 32768 or 4194304).
pub const MAP_INFLIGHT: &str = "INFLIGHT_RECV";
/// Name of the array `InFlightRecv` indexed by tid (`BPF_F_MMAPABLE`), holding the receives in
/// flight of threads whose tid is below its length: userspace sizes it to `kernel.pid_max`, at
/// most [`INFLIGHT_SLOTS_MAX`]. A slot is in flight while its `since_ns` is non-zero. An array
/// lookup is inlined by the verifier (`array_map_gen_lookup`) and needs no lock, where each
/// hash insert or delete cost ~110 ns on the receive path. Userspace reads it through `mmap`.
pub const MAP_INFLIGHT_SLOTS: &str = "INFLIGHT_SLOTS";
/// Most entries of [`MAP_INFLIGHT_SLOTS`]: 65,536 × 88 bytes = 5.5 MiB of kernel memory.
pub const INFLIGHT_SLOTS_MAX: u32 = 65536;
/// Entries of [`MAP_INFLIGHT_SLOTS`] in the object, before userspace sizes it (the default
/// `kernel.pid_max`).
pub const INFLIGHT_SLOTS_DEFAULT: u32 = 32768;
/// `BPF_F_MMAPABLE` (`include/uapi/linux/bpf.h`, 5.5+): an array map userspace can `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Name of the hash map `tid (u32) -> u64` the receive probes keep between a
/// kprobed receive function's entry and its kretprobe: the `int *err` argument, as a u64
/// (ifsock-ebpf `maps::RECV_ERR_PTR`).
pub const MAP_RECV_ERR_PTR: &str = "RECV_ERR_PTR";
/// Name of the hash map `tid (u32) -> fd (u32)` of sends in flight (ifsock-ebpf `maps::SEND_FD`).
pub const MAP_SEND_FD: &str = "SEND_FD";
/// Name of the one-entry array holding the [`SockFilter`] that `iter/udp` and `iter/tcp` apply.
pub const MAP_SOCK_FILTER: &str = "SOCK_FILTER";
/// Name of the hash map of the filter's addresses (`[u8; 16]` in `SockRecord::laddr` layout
/// -> 1), at most [`SOCK_FILTER_ADDRS`] entries: one lookup per socket instead of a loop, which
/// the 6.1 verifier refused (E2BIG: too many states through the record paths).
pub const MAP_SOCK_FILTER_ADDRS: &str = "SOCK_FILTER_ADDRS";
/// Name of the one-entry array (`u32`): 1 while `iter/task_file` writes only socket fds whose
/// inode is in [`MAP_OWNER_INODES`] (and no tun fds), 0 otherwise.
pub const MAP_OWNER_FILTER: &str = "OWNER_FILTER";
/// Name of the hash map `socket inode (u64) -> 1`: the sockets whose owners a filtered
/// snapshot wants, at most [`OWNER_FILTER_CAPACITY`] entries.
pub const MAP_OWNER_INODES: &str = "OWNER_INODES";
/// Capacity of [`MAP_OWNER_INODES`]: a filtered snapshot with more sockets reads every fd.
pub const OWNER_FILTER_CAPACITY: u32 = 16384;
/// Name of the read-only global holding [`KernelOffsets`].
pub const GLOBAL_OFFSETS: &str = "OFFSETS";
/// Name of the read-only global `u64`: receives shorter than this many ns emit no [`RecvDoneEvent`].
pub const GLOBAL_RECV_REPORT_MIN_NS: &str = "RECV_REPORT_MIN_NS";

/// Capacity of [`MAP_INFLIGHT`] (entries; one per thread currently inside a receive syscall).
pub const INFLIGHT_CAPACITY: u32 = 16384;
/// Size of the events ring buffer in bytes (power of two, multiple of the page size).
pub const EVENTS_RINGBUF_BYTES: u32 = 1 << 20;

/// Marker for an offset the running kernel's BTF does not have.
pub const OFFSET_NONE: u32 = u32::MAX;
/// Task command length (`TASK_COMM_LEN`, bytes).
pub const COMM_LEN: usize = 16;
/// Interface name length (`IFNAMSIZ`, bytes).
pub const IFNAME_LEN: usize = 16;
/// Bytes of a netlink request copied from user memory by the syscall tracepoints.
pub const NL_CAPTURE_LEN: usize = 128;

/// Byte offsets into kernel structures, read from the running kernel's BTF by userspace and
/// handed to the programs as a read-only global ([`GLOBAL_OFFSETS`]).
///
/// Rust eBPF programs get no CO-RE relocations, so these replace them. A field the running
/// kernel lacks holds [`OFFSET_NONE`] and the programs skip what depends on it. Names are
/// `<struct>_<field>`; nested paths are flattened (`net_ns_inum` = `net.ns.inum`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_daddr` (`__be32`).
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (`__be32`).
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_dport` (`__be16`).
    pub skc_dport: u32,
    /// `sock_common.skc_num` (`__u16`, host order local port).
    pub skc_num: u32,
    /// `sock_common.skc_family` (`unsigned short`).
    pub skc_family: u32,
    /// `sock_common.skc_state` (`unsigned char`).
    pub skc_state: u32,
    /// `sock_common.skc_bound_dev_if` (`int`, ifindex set by `SO_BINDTODEVICE`, 0 if unbound).
    pub skc_bound_dev_if: u32,
    /// `sock_common.skc_net` (`possible_net_t`, a `struct net *`).
    pub skc_net: u32,
    /// `sock_common.skc_v6_daddr` (`struct in6_addr`).
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (`struct in6_addr`).
    pub skc_v6_rcv_saddr: u32,
    /// `sock.sk_socket` (`struct socket *`).
    pub sk_socket: u32,
    /// `sock.sk_receive_queue.qlen` (`__u32`, queued skbs).
    pub sk_rcvq_len: u32,
    /// `sock.sk_drops` (`atomic_t`).
    pub sk_drops: u32,
    /// Word holding the IP_PKTINFO flag: `inet_sock.inet_flags` (>= 6.5) or `inet_sock.cmsg_flags` (< 6.5).
    pub inet_pktinfo_word: u32,
    /// Size in bytes of that word (8 for `inet_flags`, 1 or 2 for `cmsg_flags`).
    pub inet_pktinfo_size: u32,
    /// Bit of IP_PKTINFO in that word (`INET_FLAGS_PKTINFO` on >= 6.5, `IP_CMSG_PKTINFO` = bit 0 before).
    pub inet_pktinfo_bit: u32,
    /// `inet_sock.pinet6` (`struct ipv6_pinfo *`).
    pub inet_pinet6: u32,
    /// `ipv6_pinfo.rxopt` (a `u16` of bitfields).
    pub ipv6_rxopt: u32,
    /// Bit of `rxopt.bits.rxinfo` (IPV6_RECVPKTINFO) inside `ipv6_pinfo.rxopt`.
    pub ipv6_rxinfo_bit: u32,
    /// `socket.sk` (`struct sock *`).
    pub socket_sk: u32,
    /// `socket_alloc.vfs_inode - socket_alloc.socket`: from a `struct socket *` to its inode.
    pub socket_to_inode: u32,
    /// `inode.i_ino` (`unsigned long`).
    pub inode_i_ino: u32,
    /// `inode.i_mode` (`umode_t`, u16).
    pub inode_i_mode: u32,
    /// `inode.i_rdev` (`dev_t`, u32).
    pub inode_i_rdev: u32,
    /// `net.ns.inum` (`unsigned int`, the netns inode number).
    pub net_ns_inum: u32,
    /// `task_struct.tgid` (pid_t).
    pub task_tgid: u32,
    /// `task_struct.pid` (pid_t, the thread id).
    pub task_pid: u32,
    /// `task_struct.comm` (`char[16]`).
    pub task_comm: u32,
    /// `task_struct.files` (`struct files_struct *`).
    pub task_files: u32,
    /// `task_struct.nsproxy` (`struct nsproxy *`).
    pub task_nsproxy: u32,
    /// `nsproxy.net_ns` (`struct net *`).
    pub nsproxy_net_ns: u32,
    /// `files_struct.fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (`unsigned int`).
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (`struct file **`).
    pub fdt_fd: u32,
    /// `file.f_inode` (`struct inode *`).
    pub file_f_inode: u32,
    /// `file.private_data` (`void *`: `struct socket *` for sockets, `struct tun_file *` for tun).
    pub file_private_data: u32,
    /// `tun_file.tun` (`struct tun_struct *`, NULL while the queue is detached).
    pub tfile_tun: u32,
    /// `tun_file.queue_index` (u16).
    pub tfile_queue_index: u32,
    /// `tun_file.detached` (`struct tun_struct *`, set while detached by `IFF_DETACH_QUEUE`).
    pub tfile_detached: u32,
    /// `tun_file.tx_ring` (`struct ptr_ring`: packets waiting for the reader).
    pub tfile_tx_ring: u32,
    /// `ptr_ring.producer` (int).
    pub ring_producer: u32,
    /// `ptr_ring.consumer_head` (int).
    pub ring_consumer_head: u32,
    /// `ptr_ring.size` (int).
    pub ring_size: u32,
    /// `ptr_ring.queue` (`void **`).
    pub ring_queue: u32,
    /// `tun_struct.flags` (`unsigned int`, TUN_* / IFF_* bits).
    pub tun_flags: u32,
    /// `tun_struct.numqueues` (`unsigned int`, attached queues).
    pub tun_numqueues: u32,
    /// `tun_struct.numdisabled` (`unsigned int`, detached queues).
    pub tun_numdisabled: u32,
    /// `tun_struct.dev` (`struct net_device *`).
    pub tun_dev: u32,
    /// `tun_struct.owner` (`kuid_t`).
    pub tun_owner: u32,
    /// `tun_struct.group` (`kgid_t`).
    pub tun_group: u32,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u32,
    /// `net_device.name` (`char[16]`).
    pub dev_name: u32,
    /// `net_device.close_list` (`struct list_head`, links devices passed to `*_close_many`).
    pub dev_close_list: u32,
    /// `net_device.nd_net.net` (`possible_net_t`: the `struct net *` the device lives in).
    pub dev_nd_net: u32,
    /// `sk_buff.len` (`unsigned int`, bytes): the datagram a receive function returned.
    pub skb_len: u32,
    // sock errors
    /// `sock.sk_err` (`int`, positive errno set before `sk_error_report()`).
    pub sk_err: u32,
    /// `sock.sk_protocol` (`u16` since 5.6; a bitfield before, then [`OFFSET_NONE`]).
    pub sk_protocol: u32,
    /// `inet_sock.inet_sport` (`__be16`): the local port, kept when `inet_put_port()` clears
    /// `skc_num` (a TCP reset on connect unhashes the socket before reporting the error).
    pub inet_sport: u32,
    // wait queues (`sockets`' waiters, [`WaitRecord`])
    /// `sock.sk_wq` (`struct socket_wq __rcu *`; `&socket->wq` while the socket has a file).
    pub sk_wq: u32,
    /// `socket_wq.wait.head` (`struct list_head`: the wait queue's entries).
    pub sk_wq_head: u32,
    /// `wait_queue_entry.private` (`void *`: the task, or what the wake function expects).
    pub wqe_private: u32,
    /// `wait_queue_entry.func` (`wait_queue_func_t`: the wake function).
    pub wqe_func: u32,
    /// `wait_queue_entry.entry` (`struct list_head`, linked on the head's list).
    pub wqe_entry: u32,
    /// `poll_wqueues.polling_task` (`struct task_struct *`, fs/select.c).
    pub pwq_polling_task: u32,
    /// `eppoll_entry.base` (`struct epitem *`, fs/eventpoll.c).
    pub epe_base: u32,
    /// `eppoll_entry.wait` (`wait_queue_entry_t` on the target file's queue).
    pub epe_wait: u32,
    /// `epitem.ep` (`struct eventpoll *`: the instance the item belongs to).
    pub epi_ep: u32,
    /// `epitem.ffd.fd` (`int`: the target's fd at `EPOLL_CTL_ADD`).
    pub epi_fd: u32,
    /// `eventpoll.wq.head` (threads in `epoll_wait` on the instance).
    pub ep_wq_head: u32,
    /// `eventpoll.poll_wait.head` (pollers of the epoll file itself: nested epoll, poll on an epfd).
    pub ep_poll_wait_head: u32,
    /// `task_struct.stack` (`void *`: the base of the task's kernel stack).
    pub task_stack: u32,
    /// From `task->stack` to the syscall number the task entered with: `THREAD_SIZE -
    /// sizeof(struct pt_regs) + offsetof(struct pt_regs, orig_ax)` (x86-64 `task_pt_regs()`,
    /// `TOP_OF_KERNEL_STACK_PADDING` 0); [`OFFSET_NONE`] on other architectures.
    pub stack_syscall_nr: u32,
    /// From `task->stack` to the syscall's first argument (`pt_regs.di` on x86-64: the fd of a
    /// receive, the epoll fd of `epoll_wait`), as [`KernelOffsets::stack_syscall_nr`].
    pub stack_syscall_arg0: u32,
    /// `wait_queue_head.head` (from a queue's `struct list_head` back to its head).
    pub wqh_head: u32,
    /// `poll_table_entry.wait` (fs/select.c: the entry `pollwake` is called with).
    pub pte_wait: u32,
    /// `poll_table_entry.wait_address` (`wait_queue_head_t *` the entry is queued on).
    pub pte_wait_address: u32,
    /// `eppoll_entry.whead` (`wait_queue_head_t *` the entry is queued on).
    pub epe_whead: u32,
}

impl KernelOffsets {
    /// Every offset set to [`OFFSET_NONE`].
    pub const NONE: KernelOffsets = KernelOffsets {
        skc_daddr: OFFSET_NONE,
        skc_rcv_saddr: OFFSET_NONE,
        skc_dport: OFFSET_NONE,
        skc_num: OFFSET_NONE,
        skc_family: OFFSET_NONE,
        skc_state: OFFSET_NONE,
        skc_bound_dev_if: OFFSET_NONE,
        skc_net: OFFSET_NONE,
        skc_v6_daddr: OFFSET_NONE,
        skc_v6_rcv_saddr: OFFSET_NONE,
        sk_socket: OFFSET_NONE,
        sk_rcvq_len: OFFSET_NONE,
        sk_drops: OFFSET_NONE,
        inet_pktinfo_word: OFFSET_NONE,
        inet_pktinfo_size: OFFSET_NONE,
        inet_pktinfo_bit: OFFSET_NONE,
        inet_pinet6: OFFSET_NONE,
        ipv6_rxopt: OFFSET_NONE,
        ipv6_rxinfo_bit: OFFSET_NONE,
        socket_sk: OFFSET_NONE,
        socket_to_inode: OFFSET_NONE,
        inode_i_ino: OFFSET_NONE,
        inode_i_mode: OFFSET_NONE,
        inode_i_rdev: OFFSET_NONE,
        net_ns_inum: OFFSET_NONE,
        task_tgid: OFFSET_NONE,
        task_pid: OFFSET_NONE,
        task_comm: OFFSET_NONE,
        task_files: OFFSET_NONE,
        task_nsproxy: OFFSET_NONE,
        nsproxy_net_ns: OFFSET_NONE,
        files_fdt: OFFSET_NONE,
        fdt_max_fds: OFFSET_NONE,
        fdt_fd: OFFSET_NONE,
        file_f_inode: OFFSET_NONE,
        file_private_data: OFFSET_NONE,
        tfile_tun: OFFSET_NONE,
        tfile_queue_index: OFFSET_NONE,
        tfile_detached: OFFSET_NONE,
        tfile_tx_ring: OFFSET_NONE,
        ring_producer: OFFSET_NONE,
        ring_consumer_head: OFFSET_NONE,
        ring_size: OFFSET_NONE,
        ring_queue: OFFSET_NONE,
        tun_flags: OFFSET_NONE,
        tun_numqueues: OFFSET_NONE,
        tun_numdisabled: OFFSET_NONE,
        tun_dev: OFFSET_NONE,
        tun_owner: OFFSET_NONE,
        tun_group: OFFSET_NONE,
        dev_ifindex: OFFSET_NONE,
        dev_name: OFFSET_NONE,
        dev_close_list: OFFSET_NONE,
        dev_nd_net: OFFSET_NONE,
        skb_len: OFFSET_NONE,
        sk_err: OFFSET_NONE,
        sk_protocol: OFFSET_NONE,
        inet_sport: OFFSET_NONE,
        sk_wq: OFFSET_NONE,
        sk_wq_head: OFFSET_NONE,
        wqe_private: OFFSET_NONE,
        wqe_func: OFFSET_NONE,
        wqe_entry: OFFSET_NONE,
        pwq_polling_task: OFFSET_NONE,
        epe_base: OFFSET_NONE,
        epe_wait: OFFSET_NONE,
        epi_ep: OFFSET_NONE,
        epi_fd: OFFSET_NONE,
        ep_wq_head: OFFSET_NONE,
        ep_poll_wait_head: OFFSET_NONE,
        task_stack: OFFSET_NONE,
        stack_syscall_nr: OFFSET_NONE,
        stack_syscall_arg0: OFFSET_NONE,
        wqh_head: OFFSET_NONE,
        pte_wait: OFFSET_NONE,
        pte_wait_address: OFFSET_NONE,
        epe_whead: OFFSET_NONE,
    };
}

/// Bits of [`SockRecord::flags`].
pub mod sock_flags {
    /// IP_PKTINFO is set (`inet_sock` flags, see [`super::KernelOffsets::inet_pktinfo_word`]).
    pub const PKTINFO: u32 = 1 << 0;
    /// IPV6_RECVPKTINFO is set (`ipv6_pinfo.rxopt.bits.rxinfo`).
    pub const RECVPKTINFO6: u32 = 1 << 1;
    /// The socket has no `struct socket` (orphaned by the kernel, e.g. a TCP socket after close).
    pub const NO_SOCKET: u32 = 1 << 2;
    /// A TCP mini socket: `struct inet_timewait_sock` (TIME_WAIT) or `struct request_sock`
    /// (NEW_SYN_RECV). Only its `struct sock_common` fields were read; it has no owner, no
    /// receive queue and no socket inode.
    pub const MINI: u32 = 1 << 3;
}

/// One TCP or UDP socket, written by the `iter/tcp` and `iter/udp` programs with `bpf_seq_write`.
///
/// Addresses are in network byte order; IPv4 addresses occupy the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockRecord {
    /// Kernel address of the `struct sock` (identity within one snapshot; never printed).
    pub sk: u64,
    /// Socket cookie (`bpf_get_socket_cookie()`, `sock_gen_cookie()`: `sock_common.skc_cookie`,
    /// unique for the life of the kernel and never reused). Userspace dedupes iterator output
    /// by it.
    pub cookie: u64,
    /// Socket inode number (`SOCK_INODE(sk->sk_socket)->i_ino`), 0 when there is no `struct socket`.
    pub ino: u64,
    /// Inode of the socket's netns, filled in by userspace: the netns the walk ran in, since
    /// `iter/udp` and `iter/tcp` visit only that netns's sockets (`seq_sk_match()`, `net_eq`).
    pub netns: u32,
    /// Owner uid as given by the iterator context (`bpf_iter__udp.uid`).
    pub uid: u32,
    /// `sk_bound_dev_if`: ifindex from SO_BINDTODEVICE, 0 when unbound.
    pub bound_dev_if: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub protocol: u8,
    /// `skc_state` (TCP states; UDP uses 7 = CLOSE for unconnected and 1 = ESTABLISHED for connected).
    pub state: u8,
    /// Local port, host order.
    pub lport: u16,
    /// Remote port, host order (converted from `skc_dport`).
    pub rport: u16,
    /// [`sock_flags`] bits.
    pub flags: u32,
    /// Local address (network order).
    pub laddr: [u8; 16],
    /// Remote address (network order).
    pub raddr: [u8; 16],
    /// Queued skbs in `sk_receive_queue`.
    pub rx_queue: u32,
    /// `sk_drops`: datagrams dropped on this socket.
    pub drops: u32,
}

/// Name of the one-entry array of [`WakeFuncs`] the wait-queue walk classifies entries by.
pub const MAP_WAKE_FUNCS: &str = "WAKE_FUNCS";
/// Entries of one socket's wait queue walked at most (a longer queue gets a
/// [`wait_kind::TRUNCATED`] record). A `bpf_loop` bound: verification does not grow with it.
pub const WAIT_QUEUE_MAX: u32 = 4096;
/// Threads listed at most per epoll instance's own wait queue (`eventpoll.wq`).
pub const EPOLL_WAITERS_MAX: u32 = 1024;

/// Kernel addresses of the wake functions (`/proc/kallsyms`, read by userspace before a walk;
/// 0 = unknown). The wait-queue walk compares `wait_queue_entry.func` with them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeFuncs {
    /// `receiver_wake_function` (net/core/datagram.c: `__skb_wait_for_more_packets`), private = task.
    pub receiver: u64,
    /// `woken_wake_function` (kernel/sched/wait.c: `sk_wait_data`, `sk_stream_wait_memory`), private = task.
    pub woken: u64,
    /// `autoremove_wake_function` (kernel/sched/wait.c: `DEFINE_WAIT`, `inet_csk_wait_for_connect`), private = task.
    pub autoremove: u64,
    /// `default_wake_function` (kernel/sched/core.c: `init_waitqueue_entry`), private = task.
    pub default: u64,
    /// `pollwake` (fs/select.c: poll, ppoll, select, pselect6), private = `struct poll_wqueues *`.
    pub pollwake: u64,
    /// `ep_poll_callback` (fs/eventpoll.c), the entry is `eppoll_entry.wait`.
    pub ep_poll_callback: u64,
    /// `io_poll_wake` (io_uring/poll.c), private not followed.
    pub io_poll_wake: u64,
}

/// Kinds of [`WaitRecord`].
pub mod wait_kind {
    /// A thread sleeping on the socket itself (receive, accept, send): `private` is the task.
    pub const TASK: u32 = 1;
    /// A thread in poll/ppoll/select/pselect6 (`pollwake`; `poll_wqueues.polling_task`).
    pub const POLL: u32 = 2;
    /// A thread in `epoll_wait` on an instance whose interest list holds the socket
    /// (`ep_poll_callback` → `epitem.ep` → `eventpoll.wq`), possibly through nested instances.
    pub const EPOLL: u32 = 3;
    /// An epoll instance holding the socket with no thread waiting in it now.
    pub const EPOLL_IDLE: u32 = 4;
    /// An entry whose wake function is not one of [`super::WakeFuncs`] (or `io_poll_wake`):
    /// `func` names it.
    pub const UNKNOWN: u32 = 5;
    /// The queue had more than [`super::WAIT_QUEUE_MAX`] entries (or an epoll instance more
    /// than [`super::EPOLL_WAITERS_MAX`] threads): the walk stopped there.
    pub const TRUNCATED: u32 = 6;
    /// An entry whose task pointer did not lead to a thread id (exiting, or the entry changed
    /// under the walk): counted by userspace, never shown.
    pub const GONE: u32 = 7;
}

/// One waiter on one socket's wait queue (`sk->sk_wq->wait`), written by the `iter/udp` and
/// `iter/tcp` waiter programs with `bpf_seq_write`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WaitRecord {
    /// Socket cookie (as [`SockRecord::cookie`]).
    pub cookie: u64,
    /// Socket inode number (0 without a `struct socket`).
    pub ino: u64,
    /// Kernel address of the `struct eventpoll` (`EPOLL`, `EPOLL_IDLE`): identity within one
    /// walk, never printed.
    pub ep: u64,
    /// The entry's wake function (kernel address, resolved to a name with kallsyms; never printed).
    pub func: u64,
    /// [`wait_kind`] value.
    pub kind: u32,
    /// Thread-group id of the waiting task (`task_struct.tgid`).
    pub pid: u32,
    /// Thread id (`task_struct.pid`).
    pub tid: u32,
    /// Syscall number the task entered the kernel with (`pt_regs.orig_ax`), -1 when unread.
    pub syscall: i32,
    /// The syscall's first argument as passed (`pt_regs.di`; the fd of a receive, the epoll fd
    /// of an `epoll_wait`), -1 when unread.
    pub arg0: i32,
    /// `epitem.ffd.fd` of the innermost instance (the socket's fd when it was added), -1 otherwise.
    pub tfd: i32,
    /// Epoll nesting depth: 1 = the thread waits on the instance holding the socket.
    pub depth: u32,
    /// Padding (keeps `comm` and the record 8-byte aligned).
    pub _pad: u32,
    /// Task command (`task_struct.comm`).
    pub comm: [u8; COMM_LEN],
}

/// Kinds of [`TaskFileRecord`].
pub mod file_kind {
    /// The file is a socket (`S_ISSOCK(inode->i_mode)`).
    pub const SOCKET: u32 = 1;
    /// The file is `/dev/net/tun` (char device 10:200) with a `struct tun_file`.
    pub const TUN: u32 = 2;
}

/// One open file of interest in a task's fd table, written by the `iter/task_file` program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskFileRecord {
    /// [`file_kind`] value.
    pub kind: u32,
    /// Thread-group id (the pid users see).
    pub pid: u32,
    /// Thread id of the task the iterator visited.
    pub tid: u32,
    /// File descriptor number.
    pub fd: u32,
    /// Inode number of the file (socket inode for sockets).
    pub ino: u64,
    /// Task command (`task_struct.comm`), NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Inode of the task's netns (`task->nsproxy->net_ns->ns.inum`), 0 if the task is exiting.
    pub netns: u32,
    /// Tun only: ifindex of the device (`tun->dev->ifindex`, or of `detached`), 0 if none.
    pub tun_ifindex: u32,
    /// Tun only: device name (`net_device.name`).
    pub tun_name: [u8; IFNAME_LEN],
    /// Tun only: `tun_struct.flags` (IFF_TUN=1, IFF_TAP=2, IFF_MULTI_QUEUE=0x100, TUN_PERSIST=0x800, IFF_VNET_HDR=0x4000…).
    pub tun_flags: u32,
    /// Tun only: `tun_file.queue_index` (stale while detached: `__tun_detach` gives the index to
    /// the queue moved into the freed slot).
    pub tun_queue: u32,
    /// Tun only: 1 when the queue is detached (`tun_file.detached` set by `TUNSETQUEUE`
    /// `IFF_DETACH_QUEUE`; `tun_file.tun` stays set while detached), else 0.
    pub tun_detached: u32,
    /// Tun only: packets waiting in `tun_file.tx_ring` (read without the ring lock: a snapshot).
    pub tun_backlog: u32,
    /// Tun only: `tx_ring.size` (slots).
    pub tun_ring_size: u32,
    /// Tun only: `tun_struct.numqueues`.
    pub tun_numqueues: u32,
    /// Tun only: `tun_struct.numdisabled`.
    pub tun_numdisabled: u32,
    /// Tun only: `tun_struct.owner` uid (u32::MAX = unset).
    pub tun_owner: u32,
    /// Tun only: `tun_struct.group` gid (u32::MAX = unset).
    pub tun_group: u32,
    /// Tun only: inode of the device's netns (`tun->dev->nd_net.net->ns.inum`), 0 if unknown.
    /// Differs from [`TaskFileRecord::netns`] when the fd holder lives in another netns, and
    /// `tun_ifindex` is only unique within this one.
    pub tun_netns: u32,
}

/// Ring-buffer event kinds (the first `u32` of every event).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`LinkRequestEvent`]: a task asked the kernel to change a link.
    LinkRequest = 1,
    /// [`RecvDoneEvent`]: a receive that had been in flight returned.
    RecvDone = 2,
    /// [`SendErrorEvent`]: a send on a socket failed.
    SendError = 3,
    /// [`DeviceEvent`]: a device is being closed or unregistered (kernel function probe).
    Device = 4,
    /// [`SockErrorEvent`]: the kernel reported an error on an INET socket (`sk_error_report()`).
    SockError = 5,
}

/// [`DeviceEvent::reason`] values.
pub mod device_reason {
    /// Closing (`netif_close_many` / `dev_close_many` / `__dev_close_many`): the device goes down.
    pub const CLOSE: u32 = 1;
    /// Unregistering (`unregister_netdevice_queue`): the device is being deleted or its netns torn down.
    pub const UNREGISTER: u32 = 2;
}

/// [`DeviceEvent::via`] values.
pub mod probe_via {
    /// Tracepoint (`syscalls:*`, `sock:*`, `skb:*`).
    pub const TRACEPOINT: u32 = 0;
    /// BTF trampoline (`fentry`/`fexit`).
    pub const FENTRY: u32 = 1;
    /// `kprobe`/`kretprobe`.
    pub const KPROBE: u32 = 2;
}

/// [`InFlightRecv::func`] values: where the receive was recorded.
pub mod recv_func {
    /// A receive syscall (`syscalls:sys_enter_{recvmsg,recvfrom,recvmmsg,read}`).
    pub const SYSCALL: u32 = 0;
    /// `__skb_recv_udp(sk, flags, off, err)` (UDP/UDP-Lite `recvmsg`, every kernel with BTF).
    pub const SKB_RECV_UDP: u32 = 1;
    /// `__skb_recv_datagram(sk, queue, flags, off, err)` (raw, packet, netlink, ping... sockets).
    pub const SKB_RECV_DATAGRAM: u32 = 2;
    /// `__skb_wait_for_more_packets(sk, queue, err, timeo_p, skb)` entered with no enclosing
    /// receive function recorded (unix datagram sockets and other callers).
    pub const SKB_WAIT: u32 = 3;
}

/// `fd` of an [`InFlightRecv`] recorded by a kernel-function probe, which sees the `struct sock`
/// but not the fd.
pub const NO_FD: u32 = u32::MAX;

/// A device close/unregister seen at the kernel function, in the context of the task that
/// caused it (a process's syscall, or a kernel worker for netns teardown / driver removal).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceEvent {
    /// [`EventKind::Device`].
    pub kind: u32,
    /// [`device_reason`] value.
    pub reason: u32,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// `net_device.ifindex`.
    pub ifindex: u32,
    /// Inode of the device's netns (`dev->nd_net.net->ns.inum`).
    pub netns: u32,
    /// Thread-group id of the current task.
    pub pid: u32,
    /// Thread id of the current task.
    pub tid: u32,
    /// Current task command.
    pub comm: [u8; COMM_LEN],
    /// `net_device.name`.
    pub name: [u8; IFNAME_LEN],
    /// [`probe_via`] value.
    pub via: u32,
    /// Padding.
    pub _pad: u32,
}

/// How a [`LinkRequestEvent`] was captured.
pub mod link_request_via {
    /// `syscalls:sys_enter_sendmsg` on a netlink message (first iovec).
    pub const SENDMSG: u32 = 1;
    /// `syscalls:sys_enter_sendto` on a netlink message.
    pub const SENDTO: u32 = 2;
    /// `syscalls:sys_enter_ioctl` with `SIOCSIFFLAGS`.
    pub const IOCTL_SIOCSIFFLAGS: u32 = 3;
    /// fentry on an rtnetlink link handler (`rtnl_newlink`, `rtnl_dellink`, `rtnl_setlink`):
    /// `data` is the kernel's copy of the netlink message.
    pub const FENTRY_RTNL: u32 = 4;
    /// kprobe on an rtnetlink link handler.
    pub const KPROBE_RTNL: u32 = 5;
    /// fentry on `dev_ioctl` with `SIOCSIFFLAGS`: `data` is the kernel's copy of `struct ifreq`.
    pub const FENTRY_DEV_IOCTL: u32 = 6;
    /// kprobe on `dev_ioctl` with `SIOCSIFFLAGS`.
    pub const KPROBE_DEV_IOCTL: u32 = 7;
}

/// A task's request to change a link, captured at syscall entry (before the kernel acts on it).
///
/// For netlink, `data` holds the first [`NL_CAPTURE_LEN`] bytes of the message (`nlmsghdr`,
/// `ifinfomsg`, attributes) for userspace to parse; for `SIOCSIFFLAGS` it holds the `struct ifreq`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LinkRequestEvent {
    /// [`EventKind::LinkRequest`].
    pub kind: u32,
    /// [`link_request_via`] value.
    pub via: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Inode of the task's netns.
    pub netns: u32,
    /// Bytes of `data` that are valid.
    pub len: u32,
    /// Task command.
    pub comm: [u8; COMM_LEN],
    /// Captured request bytes.
    pub data: [u8; NL_CAPTURE_LEN],
}

/// A receive on a socket that has not returned yet; value of [`MAP_INFLIGHT`] keyed by tid.
///
/// Recorded either at `sys_enter_*` (tracepoint set: the socket is resolved from the fd at
/// entry, so closing the fd later cannot hide it) or at the entry of a kernel receive function
/// (`__skb_recv_udp`, `__skb_recv_datagram`, `__skb_wait_for_more_packets`, fentry or kprobe
/// set: the `struct sock *` is the function's first argument). Removed at the matching exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InFlightRecv {
    /// Entry time, CLOCK_MONOTONIC ns: `bpf_ktime_get_ns()` at entry when receives are timed at
    /// their exit (`teardown`); otherwise (`hung`, `watch`, `abort`, `agent`) the first `bpf_ktime_get_ns()` of the current
    /// jiffy on the CPU, early by less than one tick (`1/CONFIG_HZ` s), never late. 0 in a
    /// free slot.
    pub since_ns: u64,
    /// Kernel address of the `struct sock`: from the kernel-function argument or the `read`
    /// entry; 0 for a `recvmsg`/`recvfrom`/`recvmmsg` entry (its fd is resolved to the inode
    /// only).
    pub sk: u64,
    /// Socket inode number (`SOCK_INODE(sk->sk_socket)->i_ino`), 0 if the sock has no socket.
    pub ino: u64,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// File descriptor passed to the syscall, or [`NO_FD`] (kernel-function probes).
    pub fd: u32,
    /// Syscall number as the kernel reports it (`__syscall_nr` of the `sys_enter_*` tracepoint:
    /// the native numbers of the kernel's architecture, named by userspace's `model::sys`), or
    /// `u32::MAX` when unknown (kernel-function probes).
    pub syscall: u32,
    /// Inode of the task's netns; 0 in the map (the entry probes leave it out), filled in
    /// at exit for a `RecvDoneEvent` and by userspace (`InFlight::complete`) for a record read
    /// in flight.
    pub netns: u32,
    /// [`probe_via`] value of the probe that recorded the entry.
    pub via: u32,
    /// [`recv_func`] value: what was entered.
    pub func: u32,
    /// Sequence word of a slot of [`MAP_INFLIGHT_SLOTS`] (a seqlock with one writer, the slot's
    /// thread): odd while the thread rewrites the record, bumped to the next even value after.
    /// Userspace keeps a copy only when it read the same even value before and after copying. 0
    /// in the hash map and in events, where nothing reads it.
    pub seq: u32,
    /// When the task entered `__skb_wait_for_more_packets` (CLOCK_MONOTONIC ns), 0 when not
    /// waiting (kernel-function sets only).
    pub wait_since_ns: u64,
    /// Time spent in `__skb_wait_for_more_packets` by earlier waits of this receive (ns).
    pub waited_ns: u64,
    /// Task command; zeros in the map, filled in as `netns` is.
    pub comm: [u8; COMM_LEN],
}

/// A receive that returned after being in flight for at least `RECV_REPORT_MIN_NS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecvDoneEvent {
    /// [`EventKind::RecvDone`].
    pub kind: u32,
    /// Padding.
    pub _pad: u32,
    /// Return time (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// Return value: the syscall's (bytes, or `-errno`); for `__skb_recv_udp` /
    /// `__skb_recv_datagram` the datagram's `skb->len` (bytes) or `-*err`; for
    /// `__skb_wait_for_more_packets` its own return (0 woken, 1 shut down, `-errno`).
    pub ret: i64,
    /// What was recorded at entry.
    pub entry: InFlightRecv,
}

/// A send syscall on a socket that failed (`sys_exit_sendto`/`sys_exit_sendmsg` with `ret < 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SendErrorEvent {
    /// [`EventKind::SendError`].
    pub kind: u32,
    /// Thread-group id.
    pub pid: u32,
    /// Time of the return (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// Syscall return value (`-errno`).
    pub ret: i64,
    /// Socket inode number resolved from the fd at entry.
    pub ino: u64,
    /// Thread id.
    pub tid: u32,
    /// File descriptor.
    pub fd: u32,
    /// Task command.
    pub comm: [u8; COMM_LEN],
}

/// [`SockErrorEvent::via`] values: which program saw `sock:inet_sk_error_report`.
pub mod sock_error_via {
    /// `tp_btf/inet_sk_error_report`: the `struct sock *` was read (inode, netns, bound device).
    pub const TP_BTF: u32 = 1;
    /// Classic tracepoint `sock:inet_sk_error_report`: only its format fields; `sk`, `ino`,
    /// `netns` and `bound_dev_if` are 0 and userspace matches the socket by family, local port
    /// and local address.
    pub const TRACEPOINT: u32 = 2;
}

/// Field offsets in the classic tracepoint's record
/// (`/sys/kernel/tracing/events/sock/inet_sk_error_report/format`, include/trace/events/sock.h,
/// unchanged since the tracepoint appeared in 5.14). Userspace checks them against the format
/// file before attaching.
pub mod inet_sk_error_report_format {
    /// `int error` (`sk->sk_err`).
    pub const ERROR: usize = 8;
    /// `__u16 sport` (host order).
    pub const SPORT: usize = 12;
    /// `__u16 dport` (host order).
    pub const DPORT: usize = 14;
    /// `__u16 family`.
    pub const FAMILY: usize = 16;
    /// `__u16 protocol`.
    pub const PROTOCOL: usize = 18;
    /// `__u8 saddr[4]` (`inet_saddr`).
    pub const SADDR: usize = 20;
    /// `__u8 daddr[4]` (`inet_daddr`).
    pub const DADDR: usize = 24;
    /// `__u8 saddr_v6[16]` (`sk_v6_rcv_saddr`, or the v4-mapped `saddr` for `AF_INET`).
    pub const SADDR_V6: usize = 28;
    /// `__u8 daddr_v6[16]`.
    pub const DADDR_V6: usize = 44;
    /// Every field with its offset, as named in the format file.
    pub const FIELDS: [(&str, usize); 9] = [
        ("error", ERROR),
        ("sport", SPORT),
        ("dport", DPORT),
        ("family", FAMILY),
        ("protocol", PROTOCOL),
        ("saddr", SADDR),
        ("daddr", DADDR),
        ("saddr_v6", SADDR_V6),
        ("daddr_v6", DADDR_V6),
    ];
}

/// An error the kernel reported on an `AF_INET`/`AF_INET6` socket: tracepoint
/// `sock:inet_sk_error_report` in `sk_error_report()` (net/core/sock.c, >= 5.14), fired after
/// `sk->sk_err` is set, e.g. by an ICMP port unreachable on a connected UDP socket
/// (`__udp4_lib_err()`, `ECONNREFUSED`) or a TCP reset (`tcp_reset()`). The application sees
/// the error at its next socket call (`sock_error()` clears `sk_err`).
///
/// Addresses are in network byte order; IPv4 addresses occupy the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockErrorEvent {
    /// [`EventKind::SockError`].
    pub kind: u32,
    /// `sk->sk_err`: positive errno (111 = `ECONNREFUSED`); never 0 (`tcp_disconnect()` reports
    /// after `sk_err` was consumed: those wake-ups are not emitted).
    pub error: i32,
    /// `bpf_ktime_get_ns()` when the error was reported (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` (tp_btf only, else 0; never printed).
    pub sk: u64,
    /// Socket inode (`SOCK_INODE(sk->sk_socket)->i_ino`); 0 without a `struct socket`
    /// (orphaned TCP socket) or from the classic tracepoint.
    pub ino: u64,
    /// Inode of the socket's netns (`sk->__sk_common.skc_net->ns.inum`); 0 from the classic tracepoint.
    pub netns: u32,
    /// `sk->__sk_common.skc_bound_dev_if`: ifindex from SO_BINDTODEVICE, 0 when unbound (and from
    /// the classic tracepoint).
    pub bound_dev_if: u32,
    /// `sk->__sk_common.skc_family`: `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// `sk->sk_protocol` (`IPPROTO_TCP` 6, `IPPROTO_UDP` 17, …); 0 when unknown.
    pub protocol: u16,
    /// Local port, host order (`ntohs(inet_sport)`, as the tracepoint's `sport`; `skc_num` when
    /// the kernel has no `inet_sport`).
    pub lport: u16,
    /// Remote port, host order (`ntohs(skc_dport)`; the tracepoint's `dport`).
    pub rport: u16,
    /// Local address (`skc_rcv_saddr` / `skc_v6_rcv_saddr`; the tracepoint's `saddr` is
    /// `inet_saddr`, the source address in use).
    pub laddr: [u8; 16],
    /// Remote address (`skc_daddr` / `skc_v6_daddr`).
    pub raddr: [u8; 16],
    /// Thread-group id of the current task. Often softirq context (an ICMP or RST being
    /// received), so the task may have nothing to do with the socket.
    pub pid: u32,
    /// Thread id of the current task (same caveat).
    pub tid: u32,
    /// Current task command (same caveat).
    pub comm: [u8; COMM_LEN],
    /// [`sock_error_via`] value.
    pub via: u32,
    /// Padding.
    pub _pad: u32,
}

// No implicit padding: the eBPF side and userspace must agree byte for byte.
const _: () = assert!(core::mem::size_of::<SockErrorEvent>() == 112);

/// Indexes of the per-CPU [`MAP_COUNTERS`] array.
///
/// A name that says "drops" or "full" counts real losses only; [`Counter::IterRetries`] is not a loss.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events lost: `bpf_ringbuf_output()` / `bpf_ringbuf_reserve()` failed because the ring
    /// buffer was full. Each one is an event userspace never sees.
    RingbufDrops = 0,
    /// Receives not tracked: inserting into [`MAP_INFLIGHT`] failed (map full). Each one is a
    /// receive `hung`/`teardown` cannot see.
    InflightFull = 1,
    /// Iterator records that did not fit in the seq buffer (`bpf_seq_write()` returned
    /// `-EOVERFLOW`). Not a loss: `bpf_seq_read()` drops that object's partial output and shows
    /// the same object again at the start of the next `read()` (kernel/bpf/bpf_iter.c), so the
    /// record is written again. Counts retries.
    IterRetries = 2,
    /// Link requests captured (not a loss counter).
    LinkRequests = 3,
}

impl Counter {
    /// Every counter, in map index order.
    pub const ALL: [Counter; COUNTERS_LEN as usize] =
        [Counter::RingbufDrops, Counter::InflightFull, Counter::IterRetries, Counter::LinkRequests];
}

/// Number of counters in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = 4;

/// Address slots of a [`SockFilter`]: an IPv4 address takes two (plain and v4-mapped), an
/// IPv6 address one. An interface with more addresses is not filtered in the kernel.
pub const SOCK_FILTER_ADDRS: usize = 32;

/// Interfaces one [`SockFilter`] can hold: a change batch touching more (a burst over many
/// links) is not filtered in the kernel.
pub const SOCK_FILTER_IFINDEXES: usize = 4;

/// Which sockets `iter/udp` and `iter/tcp` write (value of [`MAP_SOCK_FILTER`], index 0),
/// set by userspace before a snapshot of some interfaces' sockets and cleared after it.
/// Admits a superset of what userspace ties to the interfaces (`model::tie`): sockets bound
/// to one of the devices (`sk_bound_dev_if` in `ifindexes`), unbound sockets whose local
/// address is the wildcard (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) or one of `addrs`; userspace
/// then decides (e.g. a non-listening TCP wildcard socket is no receiver).
/// Addresses use [`SockRecord::laddr`]'s layout: IPv4 in the first 4 bytes, rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    /// 1: filter; 0: every socket is written (the state outside a filtered snapshot).
    pub active: u32,
    /// Used slots of `addrs`.
    pub naddrs: u32,
    /// ifindexes of the interfaces; unused slots are 0, which no bound socket has.
    pub ifindexes: [u32; SOCK_FILTER_IFINDEXES],
    /// Local addresses admitted, in `SockRecord::laddr` layout.
    pub addrs: [[u8; 16]; SOCK_FILTER_ADDRS],
}

impl SockFilter {
    /// No filtering: every socket is written.
    pub const OFF: SockFilter = SockFilter { active: 0, naddrs: 0, ifindexes: [0; SOCK_FILTER_IFINDEXES], addrs: [[0; 16]; SOCK_FILTER_ADDRS] };

    /// The filter for the interface `ifindex` holding `addrs`; `None` when the addresses do
    /// not fit [`SOCK_FILTER_ADDRS`] slots (the caller then reads every socket).
    pub fn tied_to(ifindex: u32, addrs: &[core::net::IpAddr]) -> Option<SockFilter> {
        Self::tied_to_any(&[ifindex], addrs)
    }

    /// The filter for the interfaces `ifindexes` holding `addrs` between them; `None` when
    /// they do not fit [`SOCK_FILTER_IFINDEXES`] / [`SOCK_FILTER_ADDRS`] slots, or when
    /// `ifindexes` is empty or holds 0 (the caller then reads every socket).
    pub fn tied_to_any(ifindexes: &[u32], addrs: &[core::net::IpAddr]) -> Option<SockFilter> {
        if ifindexes.is_empty() || ifindexes.len() > SOCK_FILTER_IFINDEXES || ifindexes.contains(&0) {
            return None;
        }
        let mut f = SockFilter { active: 1, ..SockFilter::OFF };
        f.ifindexes[..ifindexes.len()].copy_from_slice(ifindexes);
        let mut n = 0;
        for a in addrs {
            let forms: [Option<[u8; 16]>; 2] = match a {
                core::net::IpAddr::V4(v4) => {
                    let o = v4.octets();
                    [Some([o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some(v4.to_ipv6_mapped().octets())]
                }
                core::net::IpAddr::V6(v6) => [Some(v6.octets()), None],
            };
            for form in forms.into_iter().flatten() {
                if f.addrs.iter().take(n).any(|x| *x == form) {
                    continue;
                }
                *f.addrs.get_mut(n)? = form;
                n += 1;
            }
        }
        f.naddrs = n as u32;
        Some(f)
    }

    /// True when a socket with `bound_dev_if` (`sk_bound_dev_if`) and local address `laddr`
    /// ([`SockRecord::laddr`] layout) is to be written.
    #[inline(always)]
    pub fn admits(&self, bound_dev_if: u32, laddr: &[u8; 16]) -> bool {
        let n = self.naddrs as usize;
        self.admits_with(bound_dev_if, laddr, |l| self.addrs.iter().take(n).any(|a| halves(a) == halves(l)))
    }

    /// As [`SockFilter::admits`], with the address membership answered by `held` (the eBPF side
    /// looks it up in [`MAP_SOCK_FILTER_ADDRS`]; `addrs` is userspace's copy).
    #[inline(always)]
    pub fn admits_with(&self, bound_dev_if: u32, laddr: &[u8; 16], held: impl FnOnce(&[u8; 16]) -> bool) -> bool {
        if self.active == 0 {
            return true;
        }
        if bound_dev_if != 0 {
            let i = &self.ifindexes;
            return bound_dev_if == i[0] || bound_dev_if == i[1] || bound_dev_if == i[2] || bound_dev_if == i[3];
        }
        let l = halves(laddr);
        // `::ffff:0.0.0.0` (bytes 8..16 = 0,0,ff,ff,0,0,0,0): a v4-mapped wildcard.
        let mapped_any = u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        if l[0] == 0 && (l[1] == 0 || l[1] == mapped_any) {
            return true;
        }
        held(laddr)
    }
}

/// An address as two `u64`s: compared without `memcmp`, which eBPF programs cannot call.
#[inline(always)]
fn halves(a: &[u8; 16]) -> [u64; 2] {
    // SAFETY: 16 bytes read as two u64s, unaligned; every bit pattern is a valid u64.
    unsafe { core::ptr::read_unaligned(a.as_ptr().cast::<[u64; 2]>()) }
}

/// Plain-old-data records that may be built from any bytes of the right length.
///
/// # Safety
/// Implement only for `#[repr(C)]` (or primitive integer) types whose fields are integers or
/// integer arrays, so that every bit pattern is a valid value and no padding is read as a
/// meaningful field.
pub unsafe trait Record: Copy {}

// SAFETY: primitive integers; every bit pattern is valid.
unsafe impl Record for u32 {}
// SAFETY: as above.
unsafe impl Record for u64 {}
// SAFETY (all below): #[repr(C)] with only integer / integer-array fields.
unsafe impl Record for KernelOffsets {}
unsafe impl Record for SockRecord {}
unsafe impl Record for TaskFileRecord {}
unsafe impl Record for DeviceEvent {}
unsafe impl Record for LinkRequestEvent {}
unsafe impl Record for InFlightRecv {}
unsafe impl Record for RecvDoneEvent {}
unsafe impl Record for SendErrorEvent {}
unsafe impl Record for SockErrorEvent {}
unsafe impl Record for SockFilter {}
unsafe impl Record for WaitRecord {}
unsafe impl Record for WakeFuncs {}

/// Reads a record from the start of `bytes` (unaligned copy); `None` if `bytes` is shorter
/// than `size_of::<T>()`. Extra bytes are ignored.
pub fn read_record<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; `T: Record` makes every bit pattern valid;
    // `read_unaligned` has no alignment requirement.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] with only integer / integer-array fields.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::InFlightRecv {}
    unsafe impl aya::Pod for super::SockErrorEvent {}
    unsafe impl aya::Pod for super::SockFilter {}
    unsafe impl aya::Pod for super::WakeFuncs {}
}

// ---- abort: observing what destroyed sockets' waiters see (`ifsock abort`) ----

/// Name of the hash map `tid (u32) -> AbortWake` of the threads `abort` watches: userspace
/// inserts each waiter's tid with `ts_ns == 0`; the `raw_syscalls:sys_exit` program fills the
/// first syscall return of that thread.
pub const MAP_ABORT_WATCH: &str = "ABORT_WATCH";
/// Capacity of [`MAP_ABORT_WATCH`] (threads watched by one `abort`).
pub const ABORT_WATCH_CAPACITY: u32 = 1024;
/// Classic tracepoint program on `raw_syscalls:sys_exit` filling [`MAP_ABORT_WATCH`].
pub const PROG_ABORT_SYS_EXIT: &str = "abort_sys_exit";

/// The first syscall return of a watched thread after `abort` started watching it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbortWake {
    /// `bpf_ktime_get_ns()` at the return (CLOCK_MONOTONIC, ns); 0 while it has not returned.
    pub ts_ns: u64,
    /// Return value (`raw_syscalls:sys_exit` field `ret` @16): bytes, or `-errno`
    /// (-103 = `ECONNABORTED`).
    pub ret: i64,
    /// Syscall number (`raw_syscalls:sys_exit` field `id` @8).
    pub nr: i64,
}

const _: () = assert!(core::mem::size_of::<AbortWake>() == 24);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] with only integer fields, no padding.
unsafe impl aya::Pod for AbortWake {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_from_unaligned_bytes_and_short_input_is_refused() {
        let mut bytes = [0u8; 9];
        bytes[1..5].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(read_record::<u32>(&bytes[1..]), Some(7));
        assert_eq!(read_record::<u64>(&bytes[..7]), None);
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut raw = [0; 16];
        raw[..4].copy_from_slice(&a);
        raw
    }

    #[test]
    fn sock_filter_admits_device_wildcard_and_interface_addresses_only() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        let f = SockFilter::tied_to(5, &[IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), IpAddr::V6(v6)]).unwrap();
        assert_eq!(f.naddrs, 3);
        assert!(f.admits(5, &v4([10, 1, 1, 1])), "bound to the device");
        assert!(!f.admits(6, &v4([10, 9, 0, 1])), "bound to another device");
        assert!(f.admits(0, &v4([10, 9, 0, 1])));
        assert!(f.admits(0, &Ipv4Addr::new(10, 9, 0, 1).to_ipv6_mapped().octets()), "v4-mapped on a v6 socket");
        assert!(f.admits(0, &v6.octets()));
        assert!(!f.admits(0, &v4([10, 9, 0, 2])));
        assert!(!f.admits(0, &"fd00::2".parse::<Ipv6Addr>().unwrap().octets()));
        assert!(f.admits(0, &[0; 16]), "wildcard");
        assert!(f.admits(0, &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets()), "v4-mapped wildcard");
        assert!(SockFilter::OFF.admits(6, &v4([10, 9, 0, 2])), "inactive filter admits all");
    }

    #[test]
    fn sock_filter_refuses_more_addresses_than_slots() {
        use core::net::{IpAddr, Ipv4Addr};
        let many: [IpAddr; SOCK_FILTER_ADDRS / 2 + 1] = core::array::from_fn(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8)));
        assert!(SockFilter::tied_to(1, &many).is_none());
        assert!(SockFilter::tied_to(1, &many[..SOCK_FILTER_ADDRS / 2]).is_some());
    }

    #[test]
    fn sock_filter_holds_several_interfaces_and_refuses_more_than_its_slots() {
        use core::net::{IpAddr, Ipv4Addr};
        let a = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1));
        let f = SockFilter::tied_to_any(&[5, 9], &[a, a]).unwrap();
        assert_eq!(f.naddrs, 2, "a repeated address takes its slots once");
        assert!(f.admits(5, &v4([1, 1, 1, 1])) && f.admits(9, &v4([1, 1, 1, 1])));
        assert!(!f.admits(7, &v4([10, 9, 0, 1])), "bound to a device not in the set");
        assert!(SockFilter::tied_to_any(&[1, 2, 3, 4, 5], &[]).is_none());
        assert!(SockFilter::tied_to_any(&[], &[]).is_none());
        assert!(SockFilter::tied_to_any(&[0], &[]).is_none(), "0 would admit nothing bound and is no interface");
    }

    #[test]
    fn counters_are_listed_in_map_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
