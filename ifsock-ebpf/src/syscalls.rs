//! Syscall tracepoints that name the task behind a link change (`watch`, `teardown`):
//! netlink `RTM_NEWLINK`/`RTM_DELLINK`/`RTM_SETLINK` requests sent with `sendmsg`/`sendto`, and
//! `ioctl(SIOCSIFFLAGS)`. They fire at syscall entry, before the kernel acts, so the evidence is
//! already in the ring buffer when the rtnetlink notification reaches userspace.
//!
//! Also the send-error pair (`send_enter`/`send_exit`) used by `teardown` to see what senders get.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
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

#[inline(always)]
unsafe fn emit_request(src: u64, len: u64, via: u32) {
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
        if bpf_probe_read_user_buf(src as *const u8, &mut data[..]).is_ok() {
            (*ev).len = if len < NL_CAPTURE_LEN as u64 { len as u32 } else { NL_CAPTURE_LEN as u32 };
        } else if bpf_probe_read_user_buf(src as *const u8, &mut data[..NL_LINK_MIN as usize]).is_ok() {
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
