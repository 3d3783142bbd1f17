//! Reads of kernel structures at offsets taken from the running kernel's BTF (no CO-RE in Rust
//! eBPF): userspace fills `OFFSETS` before load.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel},
    Global,
};
use ifsock_common::{KernelOffsets, COMM_LEN, OFFSET_NONE};

#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::NONE);

/// `S_IFMT`, `S_IFSOCK`, `S_IFCHR` from `include/uapi/linux/stat.h`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFCHR: u16 = 0o020000;
/// Kernel-internal `MKDEV(10, 200)` (MINORBITS = 20): `/dev/net/tun`.
pub const TUN_RDEV: u32 = (10 << 20) | 200;

/// One offset from `OFFSETS`, read field by field so the whole table never lands on the stack.
macro_rules! off {
    ($field:ident) => {{
        let table = core::ptr::addr_of!($crate::kernel::OFFSETS).cast::<ifsock_common::KernelOffsets>();
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T` in .rodata.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*table).$field)) }
    }};
}
pub(crate) use off;

/// Reads a `T` at `base + off` in kernel memory; `None` for a NULL base, a missing offset or a fault.
#[inline(always)]
pub fn rd<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == OFFSET_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel faults safely.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Netns inode of a `struct net *`.
#[inline(always)]
pub fn net_inum(net: u64) -> u32 {
    rd::<u32>(net, off!(net_ns_inum)).unwrap_or(0)
}

/// Netns inode of a task (`task->nsproxy->net_ns->ns.inum`), 0 while the task exits.
#[inline(always)]
pub fn task_netns(task: u64) -> u32 {
    let nsproxy = rd::<u64>(task, off!(task_nsproxy)).unwrap_or(0);
    let net = rd::<u64>(nsproxy, off!(nsproxy_net_ns)).unwrap_or(0);
    net_inum(net)
}

/// Task identity: (tgid, tid, comm).
#[inline(always)]
pub fn task_ids(task: u64) -> (u32, u32, [u8; COMM_LEN]) {
    let tgid = rd::<u32>(task, off!(task_tgid)).unwrap_or(0);
    let tid = rd::<u32>(task, off!(task_pid)).unwrap_or(0);
    let comm = rd::<[u8; COMM_LEN]>(task, off!(task_comm)).unwrap_or([0; COMM_LEN]);
    (tgid, tid, comm)
}

/// The current task (`struct task_struct *`).
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// A socket behind an fd: (`struct sock *`, socket inode number).
#[inline(always)]
pub fn file_socket(file: u64) -> Option<(u64, u64)> {
    let inode = rd::<u64>(file, off!(file_f_inode))?;
    let mode = rd::<u16>(inode, off!(inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let ino = rd::<u64>(inode, off!(inode_i_ino))?;
    let socket = rd::<u64>(file, off!(file_private_data))?;
    let sk = rd::<u64>(socket, off!(socket_sk)).unwrap_or(0);
    Some((sk, ino))
}

/// `current->files->fdt->fd[fd]`, or `None` if the fd is not open: the fd table by direct loads
/// ([`current_fdt`]), `fd[fd]` by one helper read.
#[inline(always)]
pub fn current_fd_file(fd: u32) -> Option<u64> {
    let fdt = current_fdt()?;
    let max = fdt_field::<u32>(fdt, off!(fdt_max_fds))?;
    if fd >= max {
        return None;
    }
    let array = fdt_field::<u64>(fdt, off!(fdt_fd))?;
    let file = rd::<u64>(array + (fd as u64) * 8, 0)?;
    if file == 0 {
        None
    } else {
        Some(file)
    }
}

/// `current->files->fdt` (`struct fdtable *`) by direct loads through the BTF-typed pointer of
/// `bpf_get_current_task_btf()` (5.11+), instead of `bpf_get_current_task()` and
/// `bpf_probe_read_kernel` calls: the verifier knows the offsets, which are read from the frozen
/// `.rodata`, as constants, checks each load against the field's BTF type (`task_struct.files`,
/// `files_struct.fdt`) and JITs it as one faultable load (`BPF_PROBE_MEM`; a fault gives 0). The
/// pointer returned stays BTF-typed, so its fields ([`current_fd_array`], `max_fds`) load the same
/// way. `None` when an offset is missing or a pointer is NULL (an exiting task has no `files`).
/// Tracing program types only (tracepoints here), where the helper exists.
#[inline(always)]
fn current_fdt() -> Option<*const u8> {
    let (o_files, o_fdt) = (off!(task_files), off!(files_fdt));
    if o_files == OFFSET_NONE || o_fdt == OFFSET_NONE {
        return None;
    }
    // SAFETY: the helper returns the current task, never NULL; each load is at the BTF offset
    // of a pointer field of the struct the previous load returned, and faults read as 0.
    unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let files = core::ptr::read_volatile(task.add(o_files as usize).cast::<*const u8>());
        if files.is_null() {
            return None;
        }
        let fdt = core::ptr::read_volatile(files.add(o_fdt as usize).cast::<*const u8>());
        (!fdt.is_null()).then_some(fdt)
    }
}

/// A field of the BTF-typed `fdt` of [`current_fdt`], by direct load (see there).
#[inline(always)]
fn fdt_field<T: Copy + Default>(fdt: *const u8, off: u32) -> Option<T> {
    if off == OFFSET_NONE {
        return None;
    }
    // SAFETY: `off` is the BTF offset of a field of type `T` of `struct fdtable`.
    Some(unsafe { core::ptr::read_volatile(fdt.add(off as usize).cast::<T>()) })
}

/// `current->files->fdt->fd`, the fd array (`struct file __rcu **`), as a plain address: a
/// pointer to a pointer has no struct type for the verifier to walk, so `fd[n]` and what lies
/// beyond are helper reads.
#[inline(always)]
pub fn current_fd_array() -> Option<u64> {
    fdt_field::<u64>(current_fdt()?, off!(fdt_fd)).filter(|&a| a != 0)
}

/// The socket behind one of the current task's fds: (`struct sock *`, inode).
#[inline(always)]
pub fn current_fd_socket(fd: u32) -> Option<(u64, u64)> {
    file_socket(current_fd_file(fd)?)
}

/// Inode number of the socket behind fd `fd` of the current task, for an fd the caller knows
/// to be a socket (`recvmsg`/`recvfrom`/`recvmmsg` take only sockets): three direct loads
/// ([`current_fd_array`]) and three `bpf_probe_read_kernel` calls (`fd[fd]`, `->private_data`,
/// then the inode beside the `struct socket` in its `struct socket_alloc`). The fd-table bound and the
/// inode mode are not checked: for an fd out of range or not a socket the syscall fails at once
/// (`EBADF`, `ENOTSOCK`) and the value, whatever the reads gave, goes with its record at exit.
#[inline(always)]
pub fn current_socket_fd_ino(fd: u32) -> u64 {
    let file = current_fd_array().and_then(|array| rd::<u64>(array + (fd as u64) * 8, 0)).unwrap_or(0);
    let socket = rd::<u64>(file, off!(file_private_data)).unwrap_or(0);
    if socket == 0 {
        return 0;
    }
    rd::<u64>(socket + off!(socket_to_inode) as u64, off!(inode_i_ino)).unwrap_or(0)
}

/// `skc_family` of a `struct sock *`.
#[inline(always)]
pub fn sk_family(sk: u64) -> u16 {
    rd::<u16>(sk, off!(skc_family)).unwrap_or(0)
}

/// Socket inode number of a `struct sock *`: `SOCK_INODE(sk->sk_socket)->i_ino`
/// (`struct socket_alloc` puts the `socket` next to its `vfs_inode`); 0 without a socket.
#[inline(always)]
pub fn sk_ino(sk: u64) -> u64 {
    let socket = rd::<u64>(sk, off!(sk_socket)).unwrap_or(0);
    if socket == 0 {
        return 0;
    }
    rd::<u64>(socket + off!(socket_to_inode) as u64, off!(inode_i_ino)).unwrap_or(0)
}
