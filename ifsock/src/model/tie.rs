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

/// Sockets tied to one interface (with its addresses) in `netns`.
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
        .filter_map(|s| {
            let binding = s.binding_to(netns, ifindex, addrs)?;
            Some(TiedSocket {
                ifindex: Some(ifindex),
                ifname: Some(name.to_string()),
                binding: Some(binding),
                bound_dev_name: bound_name(s, links, Some((ifindex, name))),
                socket: s.clone(),
            })
        })
        .collect()
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
pub fn each_once(sockets: &[Socket], netns: NetnsIno, links: &[Link]) -> Vec<TiedSocket> {
    sockets
        .iter()
        .filter(|s| s.netns == netns)
        .map(|s| {
            let tie = links.iter().find_map(|l| {
                let addrs: Vec<IpAddr> = l.addrs.iter().copied().collect();
                match s.binding_to(netns, l.ifindex, &addrs)? {
                    Binding::Wildcard => None,
                    b => Some((l, b)),
                }
            });
            let (ifindex, ifname, binding) = match tie {
                Some((l, b)) => (Some(l.ifindex), Some(l.name.clone()), Some(b)),
                None if s.bound_dev_if == 0 && s.local_addr.is_unspecified() => {
                    (None, None, s.binding_to(netns, IfIndex(0), &[]))
                }
                None => (None, None, None),
            };
            TiedSocket { ifindex, ifname, binding, bound_dev_name: bound_name(s, links, None), socket: s.clone() }
        })
        .collect()
}
