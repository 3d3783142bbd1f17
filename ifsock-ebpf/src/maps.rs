//! Maps shared by the programs. Names match the `MAP_*` constants in `ifsock-common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use ifsock_common::{
    Counter, InFlightRecv, SockFilter, BPF_F_MMAPABLE, COUNTERS_LEN, EVENTS_RINGBUF_BYTES, INFLIGHT_CAPACITY, INFLIGHT_SLOTS_DEFAULT,
    OWNER_FILTER_CAPACITY,
};

/// Events to userspace: link requests, finished long receives, send errors, device events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RINGBUF_BYTES, 0);

/// The filter `iter/udp` and `iter/tcp` apply (index 0; all zero, i.e. off, until userspace sets it).
#[map]
pub static SOCK_FILTER: Array<SockFilter> = Array::with_max_entries(1, 0);

/// The filter's local addresses (`SockRecord::laddr` layout -> 1): a set, looked up once per socket.
#[map]
pub static SOCK_FILTER_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(ifsock_common::SOCK_FILTER_ADDRS as u32, 0);

/// 1 while `iter/task_file` writes only the socket fds in `OWNER_INODES` (index 0; 0 = off).
#[map]
pub static OWNER_FILTER: Array<u32> = Array::with_max_entries(1, 0);

/// Socket inodes whose owners a filtered snapshot wants (inode -> 1).
#[map]
pub static OWNER_INODES: HashMap<u64, u8> = HashMap::with_max_entries(OWNER_FILTER_CAPACITY, 0);

/// Per-CPU counters indexed by `ifsock_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// The entry clock of `recv`'s `entry_ns` on this CPU (index 0): the jiffy it was last read in and
/// `bpf_ktime_get_ns()` then.
#[map]
pub static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);

/// A value of [`TICK_CLOCK`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TickClock {
    /// `bpf_jiffies64()` when `ns` was read.
    pub jiffies: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, ns) at the first entry of that jiffy on this CPU.
    pub ns: u64,
}

/// tid -> receive in flight, for tids beyond `INFLIGHT_SLOTS`.
#[map]
pub static INFLIGHT_RECV: HashMap<u32, InFlightRecv> =
    HashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// Receive in flight indexed by tid (`since_ns != 0` while in flight), `mmap`ed by userspace;
/// resized at load to `kernel.pid_max` (at most `INFLIGHT_SLOTS_MAX`).
#[map]
pub static INFLIGHT_SLOTS: Array<InFlightRecv> = Array::with_max_entries(INFLIGHT_SLOTS_DEFAULT, BPF_F_MMAPABLE);

/// tid -> `int *err` argument of a kprobed receive function, for its kretprobe.
#[map]
pub static RECV_ERR_PTR: HashMap<u32, u64> = HashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// tid -> fd of a send in flight (only while the send-error programs are attached).
#[map]
pub static SEND_FD: HashMap<u32, u32> = HashMap::with_max_entries(INFLIGHT_CAPACITY, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// What `iter/task_file` read of the task it is visiting: the iterator visits a task's fds one
/// after another, so each record after the first reuses it instead of seven reads of the task
/// (pid, tid, comm, `task->nsproxy->net_ns->ns.inum`). Valid for one iterator session only
/// (`bpf_iter_meta.session_id`: one snapshot), and only while the task pointer and tid match.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskIds {
    pub session: u64,
    pub task: u64,
    pub tid: u32,
    pub pid: u32,
    pub netns: u32,
    pub _pad: u32,
    pub comm: [u8; ifsock_common::COMM_LEN],
}

/// One [`TaskIds`] per CPU (an iterator's program runs on one CPU at a time).
#[map]
pub static TASK_IDS: PerCpuArray<TaskIds> = PerCpuArray::with_max_entries(1, 0);

/// Wake-function addresses the waiter walk classifies by (index 0; all zero, i.e. no walk,
/// until userspace writes them from `/proc/kallsyms`).
#[map]
pub static WAKE_FUNCS: Array<ifsock_common::WakeFuncs> = Array::with_max_entries(1, 0);

/// Epoll instances visited at most per socket (its own, then nested ones).
pub const EP_WORK_MAX: u32 = 8;

/// The state of one socket's waiter walk, in a map rather than on the stack: the `bpf_loop`
/// callbacks that walk the lists then hold no counter or address the verifier tracks by value,
/// so each is verified in one pass (on the stack, the per-entry counter kept the verifier
/// unrolling every callback past its million instructions).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WalkState {
    /// The list's head (`struct list_head *`): the walk ends when `pos` comes back to it.
    pub head: u64,
    /// The `struct list_head` being visited (an entry's `wait_queue_entry.entry`).
    pub pos: u64,
    /// The `wait_queue_head_t` of the list (`head` minus `wait_queue_head.head`).
    pub queue: u64,
    /// Entries visited on this list.
    pub seen: u32,
    /// Nesting depth of the instance whose lists are walked.
    pub depth: u32,
    /// Wake functions (a copy of [`WAKE_FUNCS`]).
    pub funcs: ifsock_common::WakeFuncs,
    /// The record being filled.
    pub rec: ifsock_common::WaitRecord,
    /// Epoll instances listed so far: those found on the socket's queue (depth 1), then those
    /// that poll an instance already listed (nested epoll, depth + 1).
    pub n: u32,
    pub _pad: u32,
    pub ep: [u64; EP_WORK_MAX as usize],
    pub tfd: [i32; EP_WORK_MAX as usize],
    pub ep_depth: [u32; EP_WORK_MAX as usize],
}

/// One [`WalkState`] per CPU (an iterator's program runs on one CPU at a time).
#[map]
pub static WALK: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);
