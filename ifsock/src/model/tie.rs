//! The tie between a socket and an interface: by device (`SO_BINDTODEVICE`), by one of the
//! interface's addresses, or as a wildcard listener.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    ids::{IfIndex, NetnsIno},
    link::Link,
    socket::{Binding, Socket},
};

/// A socket with how it is tied to one interface (or to none).
#[derive(Clone, Debug, Serialize)]
pub struct TiedSocket {
    /// ifindex of the interface, if tied.
    pub ifindex: Option<IfIndex>,
    /// Name of the interface, if tied.
    pub ifname: Option<String>,
    /// How (`device`, `address`, `wildcard`), or `none`.
    pub binding: Option<Binding>,
    /// Name of `bound_dev_if` when set (None if unknown, e.g. deleted).
    pub bound_dev_name: Option<String>,
    /// The socket.
    #[serde(flatten)]
    pub socket: Socket,
}

/// Sockets tied to one interface (with its addresses) in `netns`, cloned from `sockets`
/// (callers that keep the snapshot; [`tied_to_owned`] moves them instead).
pub fn tied_to(
    sockets: &[Socket],
    netns: NetnsIno,
    ifindex: IfIndex,
    name: &str,
    addrs: &[IpAddr],
    links: &[Link],
) -> Vec<TiedSocket> {
    sockets
        .iter()
        .filter(|s| s.binding_to(netns, ifindex, addrs).is_some())
        .cloned()
        .filter_map(|s| tie_to(s, netns, ifindex, name, addrs, links))
        .collect()
}

/// As [`tied_to`], consuming the snapshot: no socket or owner list is copied.
pub fn tied_to_owned(
    sockets: Vec<Socket>,
    netns: NetnsIno,
    ifindex: IfIndex,
    name: &str,
    addrs: &[IpAddr],
    links: &[Link],
) -> Vec<TiedSocket> {
    sockets.into_iter().filter_map(|s| tie_to(s, netns, ifindex, name, addrs, links)).collect()
}

fn tie_to(s: Socket, netns: NetnsIno, ifindex: IfIndex, name: &str, addrs: &[IpAddr], links: &[Link]) -> Option<TiedSocket> {
    let binding = s.binding_to(netns, ifindex, addrs)?;
    Some(TiedSocket {
        ifindex: Some(ifindex),
        ifname: Some(name.to_string()),
        binding: Some(binding),
        bound_dev_name: bound_name(&s, links, Some((ifindex, name))),
        socket: s,
    })
}

fn bound_name(s: &Socket, links: &[Link], known: Option<(IfIndex, &str)>) -> Option<String> {
    if s.bound_dev_if == 0 {
        return None;
    }
    if let Some((i, n)) = known {
        if i.0 == s.bound_dev_if {
            return Some(n.to_string());
        }
    }
    links.iter().find(|l| l.ifindex.0 == s.bound_dev_if).map(|l| l.name.clone())
}

/// Every socket once, tied to the interface it is most specifically bound to: its device,
/// the interface holding its address, or none; wildcard sockets have no single interface.
/// Clones from `sockets`; [`each_once_owned`] moves them instead.
pub fn each_once(sockets: &[Socket], netns: NetnsIno, links: &[Link]) -> Vec<TiedSocket> {
    let tables = addr_lists(links);
    sockets.iter().filter(|s| s.netns == netns).map(|s| tie_once(s.clone(), netns, links, &tables)).collect()
}

/// As [`each_once`], consuming the snapshot: no socket or owner list is copied.
pub fn each_once_owned(sockets: Vec<Socket>, netns: NetnsIno, links: &[Link]) -> Vec<TiedSocket> {
    let tables = addr_lists(links);
    sockets.into_iter().filter(|s| s.netns == netns).map(|s| tie_once(s, netns, links, &tables)).collect()
}

/// Each link's addresses as a slice, built once per snapshot rather than once per socket and link.
fn addr_lists(links: &[Link]) -> Vec<Vec<IpAddr>> {
    links.iter().map(|l| l.addrs.iter().copied().collect()).collect()
}

fn tie_once(s: Socket, netns: NetnsIno, links: &[Link], addrs: &[Vec<IpAddr>]) -> TiedSocket {
    let tie = links.iter().zip(addrs).find_map(|(l, a)| match s.binding_to(netns, l.ifindex, a)? {
        Binding::Wildcard => None,
        b => Some((l, b)),
    });
    let (ifindex, ifname, binding) = match tie {
        Some((l, b)) => (Some(l.ifindex), Some(l.name.clone()), Some(b)),
        None if s.bound_dev_if == 0 && s.local_addr.is_unspecified() => (None, None, s.binding_to(netns, IfIndex(0), &[])),
        None => (None, None, None),
    };
    TiedSocket { ifindex, ifname, binding, bound_dev_name: bound_name(&s, links, None), socket: s }
}
