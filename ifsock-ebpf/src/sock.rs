//! Kernel-reported socket errors: `sock:inet_sk_error_report`, fired by `sk_error_report()`
//! (net/core/sock.c, >= 5.14) for `AF_INET`/`AF_INET6` sockets right after `sk->sk_err` is set:
//! an ICMP error on a connected UDP socket (port unreachable → `ECONNREFUSED`), a TCP reset, a
//! TCP timeout. One `SockErrorEvent` per report.
//!
//! Two variants; userspace attaches the first that loads:
//! - `tp_btf`: gets the `struct sock *`, so the event carries the socket inode, netns and bound
//!   device (offsets from `OFFSETS`);
//! - the classic tracepoint: only the fields of its format (no sk), so the event carries no
//!   inode and userspace matches the socket by family, local port and local address.
//!
//! Both run in whatever context set the error, often softirq (the ICMP or RST being received):
//! the current task recorded in the event may have nothing to do with the socket.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use ifsock_common::{
    inet_sk_error_report_format as fmt, sock_error_via, Counter, EventKind, SockErrorEvent,
};

use crate::{
    kernel::{current_task, net_inum, off, rd, task_ids},
    maps::{count, EVENTS},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn blank(via: u32) -> SockErrorEvent {
    let (pid, tid, comm) = task_ids(current_task());
    SockErrorEvent {
        kind: EventKind::SockError as u32,
        error: 0,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk: 0,
        ino: 0,
        netns: 0,
        bound_dev_if: 0,
        family: 0,
        protocol: 0,
        lport: 0,
        rport: 0,
        laddr: [0; 16],
        raddr: [0; 16],
        pid,
        tid,
        comm,
        via,
        _pad: 0,
    }
}

#[inline(always)]
fn submit(ev: &SockErrorEvent) {
    if EVENTS.output(ev, 0).is_err() {
        count(Counter::RingbufDrops);
    }
}

/// `tp_btf/inet_sk_error_report`: `TP_PROTO(const struct sock *sk)`.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn sockerr_btf_error_report(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return 0;
    }
    let family = rd::<u16>(sk, off!(skc_family)).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let error = rd::<i32>(sk, off!(sk_err)).unwrap_or(0);
    // `tcp_disconnect()` reports with `sk_err` already consumed: a wake-up, not an error.
    if error == 0 {
        return 0;
    }
    let mut ev = blank(sock_error_via::TP_BTF);
    ev.sk = sk;
    ev.family = family;
    ev.error = error;
    ev.netns = net_inum(rd::<u64>(sk, off!(skc_net)).unwrap_or(0));
    ev.bound_dev_if = rd::<u32>(sk, off!(skc_bound_dev_if)).unwrap_or(0);
    ev.protocol = rd::<u16>(sk, off!(sk_protocol)).unwrap_or(0);
    ev.lport = match rd::<u16>(sk, off!(inet_sport)) {
        Some(port) => u16::from_be(port),
        None => rd::<u16>(sk, off!(skc_num)).unwrap_or(0),
    };
    ev.rport = u16::from_be(rd::<u16>(sk, off!(skc_dport)).unwrap_or(0));
    if family == AF_INET {
        let l = rd::<[u8; 4]>(sk, off!(skc_rcv_saddr)).unwrap_or([0; 4]);
        let r = rd::<[u8; 4]>(sk, off!(skc_daddr)).unwrap_or([0; 4]);
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    } else {
        ev.laddr = rd::<[u8; 16]>(sk, off!(skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        ev.raddr = rd::<[u8; 16]>(sk, off!(skc_v6_daddr)).unwrap_or([0; 16]);
    }
    // A TCP socket orphaned by close() has no `struct socket` any more: inode 0.
    let socket = rd::<u64>(sk, off!(sk_socket)).unwrap_or(0);
    if socket != 0 {
        ev.ino = rd::<u64>(socket + off!(socket_to_inode) as u64, off!(inode_i_ino)).unwrap_or(0);
    }
    submit(&ev);
    0
}

/// Classic `sock:inet_sk_error_report`, fields at the offsets of its format file
/// ([`ifsock_common::inet_sk_error_report_format`]).
#[tracepoint]
pub fn sockerr_tp_error_report(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file, checked by userspace before attaching.
    unsafe {
        let Ok(family) = ctx.read_at::<u16>(fmt::FAMILY) else { return 0 };
        if family != AF_INET && family != AF_INET6 {
            return 0;
        }
        let error = ctx.read_at::<i32>(fmt::ERROR).unwrap_or(0);
        // As for tp_btf: a report with no error is a wake-up.
        if error == 0 {
            return 0;
        }
        let mut ev = blank(sock_error_via::TRACEPOINT);
        ev.family = family;
        ev.error = error;
        ev.protocol = ctx.read_at::<u16>(fmt::PROTOCOL).unwrap_or(0);
        ev.lport = ctx.read_at::<u16>(fmt::SPORT).unwrap_or(0);
        ev.rport = ctx.read_at::<u16>(fmt::DPORT).unwrap_or(0);
        if family == AF_INET {
            let l = ctx.read_at::<[u8; 4]>(fmt::SADDR).unwrap_or([0; 4]);
            let r = ctx.read_at::<[u8; 4]>(fmt::DADDR).unwrap_or([0; 4]);
            ev.laddr[..4].copy_from_slice(&l);
            ev.raddr[..4].copy_from_slice(&r);
        } else {
            ev.laddr = ctx.read_at::<[u8; 16]>(fmt::SADDR_V6).unwrap_or([0; 16]);
            ev.raddr = ctx.read_at::<[u8; 16]>(fmt::DADDR_V6).unwrap_or([0; 16]);
        }
        submit(&ev);
    }
    0
}
