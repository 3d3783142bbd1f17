//! Errors the kernel reported on INET sockets (`sock:inet_sk_error_report`, fired by
//! `sk_error_report()` after `sk->sk_err` is set), decoded once from [`SockErrorEvent`], and
//! matched to a socket of a snapshot when the probe could not read the socket itself (the
//! classic tracepoint has no `struct sock *`).
use std::net::{IpAddr, SocketAddr};

use ifsock_common::{sock_error_via, SockErrorEvent};
use serde::Serialize;

use super::{
    ids::{comm_str, NetnsIno, SockInode},
    socket::{addr, Protocol, Socket},
};

/// The kernel tracepoint of socket errors (`sock:inet_sk_error_report`, Linux >= 5.14).
pub const SOCK_ERROR_TRACEPOINT: &str = "inet_sk_error_report";

/// Which program sees the reports (chosen at attach time; `--sock-error-probe` forces one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SockErrorProbe {
    /// `tp_btf/inet_sk_error_report`: reads the `struct sock *` (inode, netns, bound device).
    #[value(name = "tp_btf")]
    TpBtf,
    /// Classic tracepoint `sock:inet_sk_error_report`: format fields only; the socket is
    /// matched by family, local port and address in a snapshot.
    Tracepoint,
}

impl std::fmt::Display for SockErrorProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SockErrorProbe::TpBtf => write!(f, "tp_btf {SOCK_ERROR_TRACEPOINT}"),
            SockErrorProbe::Tracepoint => write!(f, "tracepoint sock:{SOCK_ERROR_TRACEPOINT}"),
        }
    }
}

/// Where the socket inode of a report comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InodeSource {
    /// `sk->sk_socket`, read by the tp_btf program.
    Sk,
    /// The only socket of a snapshot with the report's family, local port and local address
    /// (classic tracepoint; the snapshot is taken after the report, so a socket closed in
    /// between is not found).
    Snapshot,
}

/// The task current when the kernel reported the error. Often softirq context (the ICMP error
/// or TCP reset being received): it may have nothing to do with the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CurrentTask {
    /// Thread-group id (0: the idle task).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command (`swapper/N` for the idle task).
    pub comm: String,
}

/// One error report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockError {
    /// CLOCK_MONOTONIC ns of the report.
    pub ts_ns: u64,
    /// Positive errno (`sk->sk_err`).
    pub errno: i32,
    /// Socket netns; `None` from the classic tracepoint.
    pub netns: Option<NetnsIno>,
    /// Socket inode; `None` when the socket has no `struct socket` or the probe cannot say.
    pub inode: Option<SockInode>,
    /// `sk_bound_dev_if` (0: not bound to a device, or unknown from the classic tracepoint).
    pub bound_dev_if: u32,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number (`sk_protocol`), 0 when unknown.
    pub protocol: u16,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified, 0 when not connected).
    pub remote: SocketAddr,
    /// Current task at the report.
    pub task: CurrentTask,
    /// Which program saw it.
    pub via: SockErrorProbe,
}

/// IP protocol name as `ss` prints it (`tcp`, `udp`, …), the number otherwise; `None` for 0.
pub fn protocol_name(protocol: u16) -> Option<String> {
    let name = match protocol {
        0 => return None,
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        255 => "raw",
        262 => "mptcp",
        n => return Some(n.to_string()),
    };
    Some(name.to_string())
}

impl SockError {
    /// Decodes a ring-buffer record.
    pub fn from_event(e: &SockErrorEvent) -> Self {
        let via = if e.via == sock_error_via::TRACEPOINT { SockErrorProbe::Tracepoint } else { SockErrorProbe::TpBtf };
        let from_sk = via == SockErrorProbe::TpBtf;
        SockError {
            ts_ns: e.ts_ns,
            errno: e.error,
            netns: (from_sk && e.netns != 0).then_some(NetnsIno(e.netns)),
            inode: (from_sk && e.ino != 0).then_some(SockInode(e.ino)),
            bound_dev_if: e.bound_dev_if,
            family: if e.family == 2 { 4 } else { 6 },
            protocol: e.protocol,
            local: SocketAddr::new(addr(e.family, &e.laddr), e.lport),
            remote: SocketAddr::new(addr(e.family, &e.raddr), e.rport),
            task: CurrentTask { pid: e.pid, tid: e.tid, comm: comm_str(&e.comm) },
            via,
        }
    }

    /// The socket of `sockets` this report is about, for reports without an inode: same
    /// family and local port, protocol when known, and the most specific address match (exact
    /// local address, then a wildcard-bound socket; the remote endpoint decides between
    /// connected sockets). `None` when nothing matches or the best match is not unique
    /// (`SO_REUSEPORT`).
    pub fn match_socket<'a>(&self, sockets: &'a [Socket]) -> Option<&'a Socket> {
        let score = |s: &Socket| -> Option<u8> {
            if s.family != self.family || s.local_port != self.local.port() {
                return None;
            }
            // Snapshots hold TCP and UDP sockets only: another protocol matches none of them.
            match (self.protocol, s.protocol) {
                (0, _) | (6, Protocol::Tcp) | (17, Protocol::Udp) => {}
                _ => return None,
            }
            let local = if s.local_addr == self.local.ip() {
                2
            } else if s.local_addr.is_unspecified() || self.local.ip().is_unspecified() {
                1
            } else {
                return None;
            };
            let remote = if s.remote_port == 0 {
                0
            } else if s.remote_port == self.remote.port() && s.remote_addr == self.remote.ip() {
                2
            } else {
                return None;
            };
            Some(local + remote)
        };
        let mut best: Option<(u8, &Socket)> = None;
        let mut tied = false;
        for s in sockets {
            let Some(sc) = score(s) else { continue };
            match best {
                Some((b, _)) if sc < b => {}
                Some((b, _)) if sc == b => tied = true,
                _ => {
                    best = Some((sc, s));
                    tied = false;
                }
            }
        }
        if tied {
            return None;
        }
        best.map(|(_, s)| s)
    }

    /// True when the local address is one of `addrs` (for `--iface` filters).
    pub fn local_in(&self, addrs: &[IpAddr]) -> bool {
        addrs.contains(&self.local.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifsock_common::{EventKind, SockRecord};

    fn event(via: u32, laddr: [u8; 4], lport: u16, raddr: [u8; 4], rport: u16) -> SockErrorEvent {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&laddr);
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&raddr);
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        SockErrorEvent {
            kind: EventKind::SockError as u32, error: 111, ts_ns: 9, sk: 0x1000, ino: 77, netns: 4026532177,
            bound_dev_if: 0, family: 2, protocol: 17, lport, rport, laddr: l, raddr: r, pid: 10, tid: 11, comm, via, _pad: 0,
        }
    }

    fn udp(ino: u64, laddr: [u8; 4], lport: u16, raddr: [u8; 4], rport: u16) -> Socket {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&laddr);
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&raddr);
        Socket::from_record(&SockRecord {
            sk: ino, cookie: ino, ino, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 1, lport, rport,
            flags: 0, laddr: l, raddr: r, rx_queue: 0, drops: 0,
        })
    }

    #[test]
    fn tp_btf_reports_carry_inode_and_netns_and_name_the_errno() {
        let e = SockError::from_event(&event(sock_error_via::TP_BTF, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 9));
        assert_eq!((e.errno, e.inode, e.netns), (111, Some(SockInode(77)), Some(NetnsIno(4026532177))));
        assert_eq!(e.local.to_string(), "127.0.0.1:40000");
        assert_eq!(e.remote.to_string(), "127.0.0.1:9");
        assert_eq!(e.task.comm, "python3");
        assert_eq!(protocol_name(e.protocol).as_deref(), Some("udp"));
        assert_eq!(protocol_name(0), None);
    }

    #[test]
    fn classic_reports_match_the_unique_most_specific_socket() {
        let e = SockError::from_event(&event(sock_error_via::TRACEPOINT, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 9));
        assert_eq!((e.inode, e.netns), (None, None), "the classic tracepoint knows no sk");
        let connected = udp(1, [127, 0, 0, 1], 40000, [127, 0, 0, 1], 9);
        let other_port = udp(2, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 9);
        let wildcard = udp(3, [0, 0, 0, 0], 40000, [0, 0, 0, 0], 0);
        let other_peer = udp(4, [127, 0, 0, 1], 40000, [127, 0, 0, 2], 9);
        let all = [wildcard.clone(), other_port.clone(), connected, other_peer];
        assert_eq!(e.match_socket(&all).map(|s| s.inode.0), Some(1));
        assert_eq!(e.match_socket(&[wildcard.clone(), other_port.clone()]).map(|s| s.inode.0), Some(3));
        assert!(e.match_socket(&[other_port]).is_none());
        let twin = udp(5, [0, 0, 0, 0], 40000, [0, 0, 0, 0], 0);
        assert!(e.match_socket(&[wildcard, twin]).is_none(), "SO_REUSEPORT twins: ambiguous, not guessed");
    }
}
