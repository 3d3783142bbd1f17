//! Syscall tracepoints that name the task behind a link change (`watch`, `teardown`):
//! netlink `RTM_NEWLINK`/`RTM_DELLINK`/`RTM_SETLINK` requests sent with `sendmsg`/`sendto`, and
//! `ioctl(SIOCSIFFLAGS)`. They fire at syscall entry, before the kernel acts, so the evidence is
//! already in the ring buffer when the rtnetlink notification reaches userspace.
//!
//! Where fentry or kprobes are allowed, the same requests are also taken inside the kernel, on
//! the rtnetlink link handlers (`rtnl_newlink`, `rtnl_dellink`, `rtnl_setlink`) and on
//! `dev_ioctl`: these run only on link requests, not on every `sendmsg`/`ioctl` of the host, so
//! the agent can afford them. rtnetlink runs a request in the sender's context
//! (`netlink_unicast_kernel()` calls `rtnetlink_rcv()` synchronously), so the current task is
//! the requester; the handler runs before the change, as the syscall tracepoints do.
//!
//! Also the send-error pair (`send_enter`/`send_exit`) used by `teardown` to see what senders get.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use ifsock_common::{
    link_request_via, Counter, EventKind, LinkRequestEvent, SendErrorEvent, NL_CAPTURE_LEN,
};

use crate::{
    kernel::{current_fd_file, current_fd_socket, current_task, file_socket, sk_family, task_ids, task_netns},
    maps::{count, EVENTS, SEND_FD},
};

const AF_NETLINK: u16 = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 1;
/// `SIOCSIFFLAGS` (include/uapi/linux/sockios.h).
const SIOCSIFFLAGS: u32 = 0x8914;
/// `sizeof(struct nlmsghdr) + sizeof(struct ifinfomsg)`.
const NL_LINK_MIN: u32 = 32;

/// `syscalls:sys_enter_sendmsg`: fd @16, `struct user_msghdr *` @24; the first iovec is inspected.
#[tracepoint]
pub fn link_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file; user reads fault safely.
    unsafe {
        let Ok(fd) = ctx.read_at::<u64>(16) else { return 0 };
        let Ok(msg) = ctx.read_at::<u64>(24) else { return 0 };
        // struct user_msghdr: msg_name @0, msg_namelen @8, msg_iov @16, msg_iovlen @24.
        let Ok(iov) = bpf_probe_read_user((msg + 16) as *const u64) else { return 0 };
        let Ok(base) = bpf_probe_read_user(iov as *const u64) else { return 0 };
        let Ok(len) = bpf_probe_read_user((iov + 8) as *const u64) else { return 0 };
        capture_netlink(fd as u32, base, len, link_request_via::SENDMSG);
    }
    0
}

/// `syscalls:sys_enter_sendto`: fd @16, buff @24, len @32.
#[tracepoint]
pub fn link_enter_sendto(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    unsafe {
        let Ok(fd) = ctx.read_at::<u64>(16) else { return 0 };
        let Ok(base) = ctx.read_at::<u64>(24) else { return 0 };
        let Ok(len) = ctx.read_at::<u64>(32) else { return 0 };
        capture_netlink(fd as u32, base, len, link_request_via::SENDTO);
    }
    0
}

/// `syscalls:sys_enter_ioctl`: fd @16, cmd @24, arg @32; only `SIOCSIFFLAGS` (`struct ifreq`).
#[tracepoint]
pub fn link_enter_ioctl(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    unsafe {
        let Ok(cmd) = ctx.read_at::<u64>(24) else { return 0 };
        if cmd as u32 != SIOCSIFFLAGS {
            return 0;
        }
        let Ok(arg) = ctx.read_at::<u64>(32) else { return 0 };
        emit_request(arg, 32, link_request_via::IOCTL_SIOCSIFFLAGS);
    }
    0
}

/// Emits a netlink link request if `fd` is an `AF_NETLINK` socket and the buffer starts with a
/// link request header. The header check comes first: it is the cheap filter on a hot syscall.
#[inline(always)]
unsafe fn capture_netlink(fd: u32, base: u64, len: u64, via: u32) {
    if len < NL_LINK_MIN as u64 {
        return;
    }
    // struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
    let Ok(hdr) = (unsafe { bpf_probe_read_user(base as *const [u16; 4]) }) else { return };
    let ty = hdr[2];
    if (ty != RTM_NEWLINK && ty != RTM_DELLINK && ty != RTM_SETLINK) || hdr[3] & NLM_F_REQUEST == 0 {
        return;
    }
    let Some((sk, _)) = current_fd_socket(fd) else { return };
    if sk_family(sk) != AF_NETLINK {
        return;
    }
    unsafe { emit_request(base, len, via) };
}

/// An rtnetlink link handler's `struct nlmsghdr *nlh` (its second argument, kernel memory):
/// the type was chosen by the attach (`rtnl_{new,del,set}link`), so only the request flag and
/// the length are checked.
#[inline(always)]
unsafe fn rtnl_request(nlh: u64, via: u32) {
    if nlh == 0 {
        return;
    }
    let Ok(hdr) = (unsafe { bpf_probe_read_kernel(nlh as *const [u32; 2]) }) else { return };
    let flags = (hdr[1] >> 16) as u16;
    if hdr[0] < NL_LINK_MIN || flags & NLM_F_REQUEST == 0 {
        return;
    }
    unsafe { emit(nlh, hdr[0] as u64, via, true) };
}

/// `dev_ioctl(struct net *, unsigned int cmd, struct ifreq *ifr, ...)`: only `SIOCSIFFLAGS`;
/// `ifr` is the kernel's copy (`sock_do_ioctl()` copied it in).
#[inline(always)]
unsafe fn dev_ioctl_request(cmd: u64, ifr: u64, via: u32) {
    if cmd as u32 != SIOCSIFFLAGS || ifr == 0 {
        return;
    }
    unsafe { emit(ifr, 32, via, true) };
}

/// fentry on `rtnl_newlink(struct sk_buff *, struct nlmsghdr *, struct netlink_ext_ack *)`
/// (one fentry program per function: each is loaded against its function's BTF).
#[fentry(function = "rtnl_newlink")]
pub fn link_fentry_newlink(ctx: FEntryContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { rtnl_request(ctx.arg::<u64>(1), link_request_via::FENTRY_RTNL) };
    0
}

/// fentry on `rtnl_dellink` (arguments as `rtnl_newlink`).
#[fentry(function = "rtnl_dellink")]
pub fn link_fentry_dellink(ctx: FEntryContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { rtnl_request(ctx.arg::<u64>(1), link_request_via::FENTRY_RTNL) };
    0
}

/// fentry on `rtnl_setlink` (arguments as `rtnl_newlink`).
#[fentry(function = "rtnl_setlink")]
pub fn link_fentry_setlink(ctx: FEntryContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { rtnl_request(ctx.arg::<u64>(1), link_request_via::FENTRY_RTNL) };
    0
}

/// kprobe on the rtnetlink link handlers.
#[kprobe]
pub fn link_kprobe_rtnl(ctx: ProbeContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { rtnl_request(ctx.arg::<u64>(1).unwrap_or(0), link_request_via::KPROBE_RTNL) };
    0
}

/// fentry on `dev_ioctl`.
#[fentry(function = "dev_ioctl")]
pub fn link_fentry_dev_ioctl(ctx: FEntryContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { dev_ioctl_request(ctx.arg::<u64>(1), ctx.arg::<u64>(2), link_request_via::FENTRY_DEV_IOCTL) };
    0
}

/// kprobe on `dev_ioctl`.
#[kprobe]
pub fn link_kprobe_dev_ioctl(ctx: ProbeContext) -> u32 {
    // SAFETY: kernel reads fault safely.
    unsafe { dev_ioctl_request(ctx.arg::<u64>(1).unwrap_or(0), ctx.arg::<u64>(2).unwrap_or(0), link_request_via::KPROBE_DEV_IOCTL) };
    0
}

#[inline(always)]
unsafe fn emit_request(src: u64, len: u64, via: u32) {
    unsafe { emit(src, len, via, false) };
}

/// Emits one [`LinkRequestEvent`] with up to [`NL_CAPTURE_LEN`] bytes of `src` (`kernel`:
/// kernel memory, else the task's).
#[inline(always)]
unsafe fn emit(src: u64, len: u64, via: u32, kernel: bool) {
    count(Counter::LinkRequests);
    let Some(mut entry) = EVENTS.reserve::<LinkRequestEvent>(0) else {
        count(Counter::RingbufDrops);
        return;
    };
    let task = current_task();
    let (pid, tid, comm) = task_ids(task);
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring-buffer memory of the right size.
    unsafe {
        (*ev).kind = EventKind::LinkRequest as u32;
        (*ev).via = via;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).pid = pid;
        (*ev).tid = tid;
        (*ev).netns = task_netns(task);
        (*ev).comm = comm;
        let data = &mut (*ev).data;
        // Read the whole window when possible; a short message at the end of a mapping needs the fallback.
        let read = |d: &mut [u8]| if kernel { bpf_probe_read_kernel_buf(src as *const u8, d).is_ok() } else { bpf_probe_read_user_buf(src as *const u8, d).is_ok() };
        if read(&mut data[..]) {
            (*ev).len = if len < NL_CAPTURE_LEN as u64 { len as u32 } else { NL_CAPTURE_LEN as u32 };
        } else if read(&mut data[..NL_LINK_MIN as usize]) {
            (*ev).len = NL_LINK_MIN;
        } else {
            entry.discard(0);
            return;
        }
    }
    entry.submit(0);
}

/// `syscalls:sys_enter_sendto` / `sys_enter_sendmsg`: remember the fd until the exit.
#[tracepoint]
pub fn send_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: fd is at offset 16 in both formats.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(16) }) else { return 0 };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = SEND_FD.insert(&tid, &(fd as u32), 0);
    0
}

/// `syscalls:sys_exit_sendto` / `sys_exit_sendmsg`: emit a `SendErrorEvent` when `ret < 0` on a socket.
#[tracepoint]
pub fn send_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: map value read by copy.
    let Some(fd) = (unsafe { SEND_FD.get(&tid).copied() }) else { return 0 };
    let _ = SEND_FD.remove(&tid);
    // SAFETY: ret is at offset 16 in both formats.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else { return 0 };
    if ret >= 0 {
        return 0;
    }
    let ino = current_fd_file(fd).and_then(file_socket).map(|(_, ino)| ino).unwrap_or(0);
    let (pid, tid, comm) = task_ids(current_task());
    let ev = SendErrorEvent {
        kind: EventKind::SendError as u32,
        pid,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ret,
        ino,
        tid,
        fd,
        comm,
    };
    if EVENTS.output(&ev, 0).is_err() {
        count(Counter::RingbufDrops);
    }
    0
}
