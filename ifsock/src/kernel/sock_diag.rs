//! NETLINK_SOCK_DIAG (`inet_diag`): `SOCK_DESTROY` of one exact socket, named by the identity
//! the socket iterator read ([`DiagSocket::of`]: tuple, bound device, cookie), and a
//! `SOCK_DIAG_BY_FAMILY` dump, which `doctor` uses to prove the inet_diag handlers exist.
//!
//! Kernel facts: `inet_diag_msg.id` is `struct inet_diag_sockid` with `idiag_if =
//! sk->sk_bound_dev_if` and `idiag_cookie = sock_gen_cookie(sk)` (the value
//! `bpf_get_socket_cookie()` returns), `idiag_inode = sock_i_ino(sk)`. `SOCK_DESTROY` (21,
//! Linux >= 4.5, `CONFIG_INET_DIAG_DESTROY`) looks the socket up by the exact tuple and
//! `idiag_if` (`inet_diag_find_one_icsk()` for TCP, `__udp4_lib_lookup()` for UDP), checks the
//! cookie (`sock_diag_check_cookie()`: `ESTALE` on a mismatch) and calls
//! `sk->sk_prot->diag_destroy(sk, ECONNABORTED)` (`tcp_abort()`, `udp_abort()`). Without
//! `CONFIG_INET_DIAG_DESTROY` the handler has no `destroy` and the answer is `EOPNOTSUPP`.
//! The sockets seen are those of the netns of the thread that opens the netlink socket.
use std::{io, net::IpAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::model::{ids::SockInode, socket::Protocol};

/// `SOCK_DESTROY` (include/uapi/linux/sock_diag.h).
pub const SOCK_DESTROY: u16 = netlink_packet_sock_diag::SOCK_DESTROY;

/// Errors of the sock_diag socket itself (a failed destroy is a [`DestroyOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// socket(AF_NETLINK, NETLINK_SOCK_DIAG) or its I/O failed.
    #[error("NETLINK_SOCK_DIAG {what}: {source} (kernel without CONFIG_INET_DIAG, or the inet_diag/udp_diag modules are not loadable)")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel answered with something that does not parse.
    #[error("NETLINK_SOCK_DIAG answer does not parse: {0}")]
    Decode(String),
}

/// One socket as `inet_diag` reports it: the exact identity `SOCK_DESTROY` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// `AF_INET` (2) or `AF_INET6` (10): the request must use the socket's own family (a
    /// v4-mapped IPv6 socket is AF_INET6).
    pub family: u8,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// `idiag_state` (TCP state number; UDP: 7 unconnected, 1 connected).
    pub state: u8,
    /// `idiag_inode`.
    pub inode: SockInode,
    /// `idiag_cookie` as a u64 (`sock_gen_cookie()`).
    pub cookie: u64,
    /// `idiag_src`/`idiag_sport`: local address and port.
    pub local: (IpAddr, u16),
    /// `idiag_dst`/`idiag_dport`: remote address and port.
    pub remote: (IpAddr, u16),
    /// `idiag_if`: `sk_bound_dev_if`.
    pub bound_dev_if: u32,
}

impl DiagSocket {
    /// The identity of a socket the iterator listed: its family (an IPv6 socket with a
    /// v4-mapped address is addressed as AF_INET6 with `::ffff:a.b.c.d`, the form inet_diag
    /// matches), tuple, `sk_bound_dev_if` and cookie (`bpf_get_socket_cookie()` reads the same
    /// `sk_cookie` as `sock_gen_cookie()`). `state` is left 0: `SOCK_DESTROY` looks sockets up
    /// by tuple with every state allowed.
    pub fn of(s: &crate::model::socket::Socket) -> Self {
        // `Socket::family` is the IP version (4 or 6), not the AF_ number.
        let family = if s.family == 4 { AF_INET } else { AF_INET6 };
        let on_wire = |a: IpAddr| match (family, a) {
            (AF_INET6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => a,
        };
        DiagSocket {
            family,
            protocol: s.protocol,
            state: 0,
            inode: s.inode,
            cookie: s.cookie,
            local: (on_wire(s.local_addr), s.local_port),
            remote: (on_wire(s.remote_addr), s.remote_port),
            bound_dev_if: s.bound_dev_if,
        }
    }
}

/// What `SOCK_DESTROY` answered for one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyOutcome {
    /// Acknowledged: `diag_destroy()` ran (the socket got `ECONNABORTED`).
    Destroyed,
    /// `ENOENT` (no socket with that tuple) or `ESTALE` (the tuple now belongs to another
    /// socket: the cookie differs): the selected socket is gone.
    Gone,
    /// Any other errno (`EOPNOTSUPP`: no `CONFIG_INET_DIAG_DESTROY`; `EPERM`: no CAP_NET_ADMIN).
    Failed(i32),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SockDiagError {
    move |source| SockDiagError::Io { what, source }
}

fn open() -> Result<Socket, SockDiagError> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(io_err("socket"))?;
    s.bind_auto().map_err(io_err("bind"))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(io_err("connect"))?;
    Ok(s)
}

fn send(s: &Socket, mut msg: NetlinkMessage<impl netlink_packet_core::NetlinkSerializable>) -> Result<(), SockDiagError> {
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0).map_err(io_err("send"))?;
    Ok(())
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// Every TCP and UDP socket (IPv4 and IPv6) of the calling thread's netns.
///
/// # Errors
/// [`SockDiagError`] when NETLINK_SOCK_DIAG is unavailable or answers garbage.
pub fn dump_all() -> Result<Vec<DiagSocket>, SockDiagError> {
    let s = open()?;
    let mut out = Vec::new();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        for family in [AF_INET, AF_INET6] {
            dump(&s, family, protocol, &mut out)?;
        }
    }
    Ok(out)
}

fn dump(s: &Socket, family: u8, protocol: Protocol, out: &mut Vec<DiagSocket>) -> Result<(), SockDiagError> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let req = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: proto_num(protocol),
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    });
    send(s, NetlinkMessage::new(hdr, NetlinkPayload::from(req)))?;
    loop {
        let (buf, _) = s.recv_from_full().map_err(io_err("recv"))?;
        let mut off = 0;
        while off < buf.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..]).map_err(|e| SockDiagError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(SockDiagError::Io { what: "dump", source: e.to_io() });
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let id = &h.socket_id;
                    out.push(DiagSocket {
                        family: h.family,
                        protocol,
                        state: h.state,
                        inode: SockInode(u64::from(h.inode)),
                        cookie: u64::from_ne_bytes(id.cookie),
                        local: (id.source_address, id.source_port),
                        remote: (id.destination_address, id.destination_port),
                        bound_dev_if: id.interface_id,
                    });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn destroy_request(d: &DiagSocket) -> NetlinkMessage<SockDiagDestroy> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    let req = SockDiagMessage::InetRequest(InetRequest {
        family: d.family,
        protocol: proto_num(d.protocol),
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: d.local.1,
            destination_port: d.remote.1,
            source_address: d.local.0,
            destination_address: d.remote.0,
            interface_id: d.bound_dev_if,
            cookie: d.cookie.to_ne_bytes(),
        },
    });
    NetlinkMessage::new(hdr, NetlinkPayload::from(SockDiagDestroy::new(req)))
}

/// `SOCK_DESTROY` for exactly `d` (tuple, `idiag_if` and cookie).
///
/// # Errors
/// [`SockDiagError`] when the netlink socket itself fails; the kernel's answer is the outcome.
pub fn destroy(d: &DiagSocket) -> Result<DestroyOutcome, SockDiagError> {
    let s = open()?;
    send(&s, destroy_request(d))?;
    let (buf, _) = s.recv_from_full().map_err(io_err("recv"))?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf).map_err(|e| SockDiagError::Decode(e.to_string()))?;
    match msg.payload {
        NetlinkPayload::Error(e) => Ok(outcome(e.raw_code())),
        other => Err(SockDiagError::Decode(format!("expected an ack to SOCK_DESTROY, got {other:?}"))),
    }
}

/// The outcome of a `SOCK_DESTROY` answer code (`nlmsgerr.error`: 0 or `-errno`).
pub fn outcome(code: i32) -> DestroyOutcome {
    match -code {
        0 => DestroyOutcome::Destroyed,
        libc::ENOENT | libc::ESTALE => DestroyOutcome::Gone,
        errno => DestroyOutcome::Failed(errno),
    }
}

/// Whether `SOCK_DESTROY` works here, asked safely: a destroy for a UDP tuple
/// (`127.0.0.1:1` ↔ `127.0.0.1:1`), after a dump showed the inet_diag handlers exist, with a
/// cookie no socket has (`u64::MAX - 1`; all-ones would
/// mean "any cookie"), so nothing can be destroyed. `ENOENT`/`ESTALE` mean the handler has a
/// destroy (supported), `EOPNOTSUPP` means `CONFIG_INET_DIAG_DESTROY` is off.
///
/// # Errors
/// The answer as a sentence naming the missing piece.
pub fn probe_destroy() -> Result<(), String> {
    // A missing inet_diag/udp_diag handler also answers ENOENT: a dump first proves both exist,
    // so that ENOENT below can only mean "no such socket".
    dump_all().map_err(|e| format!("sock_diag cannot list sockets: {e}"))?;
    let lo = IpAddr::from([127, 0, 0, 1]);
    let d = DiagSocket {
        family: AF_INET,
        protocol: Protocol::Udp,
        state: 7,
        inode: SockInode(0),
        cookie: u64::MAX - 1,
        local: (lo, 1),
        remote: (lo, 1),
        bound_dev_if: 0,
    };
    match destroy(&d) {
        Ok(DestroyOutcome::Gone) => Ok(()),
        Ok(DestroyOutcome::Destroyed) => Ok(()),
        Ok(DestroyOutcome::Failed(e)) if e == libc::EOPNOTSUPP => {
            Err("SOCK_DESTROY answered EOPNOTSUPP: the kernel lacks CONFIG_INET_DIAG_DESTROY".into())
        }
        Ok(DestroyOutcome::Failed(e)) => Err(format!("SOCK_DESTROY answered {}", crate::model::sys::errno_desc(e))),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_answers_map_to_outcomes() {
        assert_eq!(outcome(0), DestroyOutcome::Destroyed);
        assert_eq!(outcome(-libc::ENOENT), DestroyOutcome::Gone);
        assert_eq!(outcome(-libc::ESTALE), DestroyOutcome::Gone);
        assert_eq!(outcome(-libc::EOPNOTSUPP), DestroyOutcome::Failed(libc::EOPNOTSUPP));
    }

    #[test]
    fn identity_of_an_iterator_socket_uses_af_numbers_and_v4_mapped_form() {
        let rec = |family: u16, laddr: [u8; 16]| ifsock_common::SockRecord {
            sk: 1, cookie: 0xabc, ino: 42, netns: 7, uid: 0, bound_dev_if: 3, family, protocol: 17, state: 7, lport: 53, rport: 0,
            flags: 0, laddr, raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 0, 0, 1]);
        let d = DiagSocket::of(&crate::model::socket::Socket::from_record(&rec(2, v4)));
        assert_eq!((d.family, d.cookie, d.bound_dev_if, d.local), (AF_INET, 0xabc, 3, (IpAddr::from([10, 0, 0, 1]), 53)));
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 0, 0, 1]);
        let d = DiagSocket::of(&crate::model::socket::Socket::from_record(&rec(10, mapped)));
        assert_eq!(d.family, AF_INET6);
        assert_eq!(d.local.0, "::ffff:10.0.0.1".parse::<IpAddr>().unwrap(), "a v4-mapped bind is asked for as AF_INET6");
    }

    #[test]
    fn destroy_request_carries_tuple_interface_and_cookie() {
        let d = DiagSocket {
            family: AF_INET,
            protocol: Protocol::Udp,
            state: 7,
            inode: SockInode(9),
            cookie: 0x1122_3344_5566_7788,
            local: (IpAddr::from([10, 0, 0, 1]), 5353),
            remote: (IpAddr::from([0, 0, 0, 0]), 0),
            bound_dev_if: 4,
        };
        let mut m = destroy_request(&d);
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        // nlmsghdr: len, type, flags
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), SOCK_DESTROY);
        // inet_diag_req_v2 after the 16-byte header: family, protocol, ext, pad, states(4), id
        assert_eq!(buf[16], AF_INET);
        assert_eq!(buf[17], IPPROTO_UDP);
        let id = &buf[24..];
        assert_eq!(u16::from_be_bytes([id[0], id[1]]), 5353);
        assert_eq!(&id[4..8], &[10, 0, 0, 1]);
        assert_eq!(u32::from_ne_bytes([id[36], id[37], id[38], id[39]]), 4);
        assert_eq!(u64::from_ne_bytes(id[40..48].try_into().unwrap()), d.cookie);
    }
}
