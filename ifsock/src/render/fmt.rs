//! Formatters shared by every renderer: owners, bindings, addresses (errno names are
//! [`crate::model::sys`]'s). Written once here so
//! the table, the event lines and the reports spell things the same way.
use crate::model::socket::{Binding, Owner, Protocol, Socket};

/// `comm[pid]/fdN`, as in the `OWNERS` column.
pub fn owner(o: &Owner) -> String {
    format!("{}[{}]/fd{}", o.comm, o.pid, o.fd)
}

/// Owners joined with `,`, or `empty` when no fd references the socket.
pub fn owners(list: &[Owner], empty: &str) -> String {
    if list.is_empty() {
        return empty.to_string();
    }
    list.iter().map(owner).collect::<Vec<_>>().join(",")
}

/// `device`, `address`, `wildcard`, or `none` (the JSON spelling).
pub fn binding(b: Option<Binding>) -> &'static str {
    crate::model::socket::binding_name(b)
}

/// An address as tables show it: IPv4 plain, IPv6 in brackets, and the IPv4 address of a
/// v4-mapped IPv6 socket ([`crate::model::socket::Socket::v4_mapped`]) as `[::ffff:a.b.c.d]`,
/// as `ss` prints it.
pub fn addr(a: &std::net::IpAddr, v4_mapped: bool) -> String {
    match a {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) if v4_mapped => format!("[{}]", v4.to_ipv6_mapped()),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }
}

/// `tcp` or `udp` ([`Protocol::name`]).
pub fn protocol(p: Protocol) -> &'static str {
    p.name()
}

/// Protocol and IP version, as the `PROTO` column: `udp4`, `tcp6`.
pub fn proto_family(s: &Socket) -> String {
    format!("{}{}", s.protocol.name(), s.family)
}

/// `address:port` as tables show it ([`addr`]): `10.0.0.1:53`, `[fe80::1]:53`,
/// `[::ffff:10.0.0.1]:53` for a v4-mapped socket.
pub fn endpoint(a: &std::net::IpAddr, v4_mapped: bool, port: u16) -> String {
    format!("{}:{port}", addr(a, v4_mapped))
}

/// The local endpoint of a socket ([`endpoint`]).
pub fn local(s: &Socket) -> String {
    endpoint(&s.local_addr, s.v4_mapped, s.local_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_bindings_are_spelled_once() {
        let o = Owner { pid: 12, comm: "unbound".into(), fd: 3 };
        assert_eq!(owner(&o), "unbound[12]/fd3");
        assert_eq!(owners(&[o.clone(), Owner { fd: 4, ..o }], "-"), "unbound[12]/fd3,unbound[12]/fd4");
        assert_eq!(owners(&[], "-"), "-");
        assert_eq!(binding(Some(Binding::Wildcard)), "wildcard");
        assert_eq!(binding(None), "none");
        let v4 = std::net::IpAddr::from([10, 253, 0, 1]);
        assert_eq!(addr(&v4, true), "[::ffff:10.253.0.1]");
        assert_eq!(addr(&v4, false), "10.253.0.1");
        assert_eq!(addr(&"fe80::1".parse().unwrap_or(v4), false), "[fe80::1]");
        assert_eq!(endpoint(&v4, true, 53), "[::ffff:10.253.0.1]:53");
        assert_eq!(endpoint(&"fe80::1".parse().unwrap_or(v4), false, 53), "[fe80::1]:53");
        assert_eq!(protocol(Protocol::Udp), "udp");
        // The table's spelling is the JSON's.
        assert_eq!(serde_json::to_value(Protocol::Tcp).unwrap(), protocol(Protocol::Tcp));
    }
}
