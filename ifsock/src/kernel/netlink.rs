//! rtnetlink: link/address dumps and changes through `rtnetlink`'s handle, and the event
//! subscription on a raw `netlink-sys` socket so that `ENOBUFS` reaches us (netlink-proto's
//! connection ends its stream on any receive error).
use std::{collections::BTreeSet, net::IpAddr, os::fd::AsRawFd};

use anyhow::{Context as _, Result};
use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    Handle, LinkUnspec,
};
use tokio::io::unix::AsyncFd;

use crate::model::{
    ids::IfIndex,
    link::{AddrInfo, AddrTable, Dump, Link, Update},
    tun::{TunInfo, TunLink},
};

/// `RTNLGRP_LINK` (include/uapi/linux/rtnetlink.h).
pub const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_IPV4_IFADDR`.
pub const RTNLGRP_IPV4_IFADDR: u32 = 5;
/// `RTNLGRP_IPV6_IFADDR`.
pub const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// Opens an rtnetlink request connection in the calling thread's netns and spawns its driver.
///
/// # Errors
/// The netlink socket could not be created.
pub fn connect() -> Result<Handle> {
    connect_in(None)
}

/// Opens an rtnetlink request connection in `netns` (the caller's netns when `None`) and
/// spawns its driver on the current tokio runtime. The socket is created inside the netns
/// (a netlink socket belongs to the netns it was created in); the calling thread is not moved.
///
/// # Errors
/// The netlink socket could not be created, or entering `netns` failed.
pub fn connect_in(netns: Option<&crate::kernel::netns::NetnsHandle>) -> Result<Handle> {
    let open = || rtnetlink::new_connection().context("opening an rtnetlink socket");
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = match netns {
        None => open()?,
        Some(ns) => ns.run(move || {
            let _guard = rt.enter();
            open()
        })??,
    };
    tokio::spawn(conn);
    Ok(handle)
}

/// Reduces an `RTM_NEWLINK`/`RTM_DELLINK` message.
pub fn link_update(msg: &LinkMessage, deleted: bool) -> Update {
    let ifindex = IfIndex(msg.header.index);
    let mut name = String::new();
    let mut moved = false;
    let (mut link, mut link_elsewhere) = (None, false);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::NewNetnsId(_) => moved = true,
            // IFLA_LINK: for veth, `veth_get_iflink()` = the peer's ifindex; with
            // IFLA_LINK_NETNSID it is an ifindex of another netns.
            LinkAttribute::Link(i) => link = Some(IfIndex(*i)),
            LinkAttribute::LinkNetNsId(_) => link_elsewhere = true,
            _ => {}
        }
    }
    if deleted {
        Update::DelLink { ifindex, name, moved }
    } else {
        let peer = link.filter(|p| !link_elsewhere && p.0 != 0 && *p != ifindex);
        Update::NewLink { ifindex, name, flags: msg.header.flags.bits(), peer }
    }
}

/// The interface address of an `RTM_NEWADDR`/`RTM_DELADDR` (`IFA_LOCAL`, else `IFA_ADDRESS`).
pub fn address_of(msg: &AddressMessage) -> Option<(IfIndex, IpAddr)> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some((IfIndex(msg.header.index), addr))
}

/// Flags, prefix length and scope of an `RTM_NEWADDR`: `ifa_flags` comes from the `IFA_FLAGS`
/// attribute when the kernel sends it (>= 3.14, it holds the bits above 0x80 such as
/// `IFA_F_NOPREFIXROUTE`), else from the 8-bit `ifaddrmsg.ifa_flags`.
pub fn address_info(msg: &AddressMessage) -> AddrInfo {
    let flags = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(f.bits()),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(msg.header.flags.bits()));
    AddrInfo { flags, prefix_len: msg.header.prefix_len, scope: u8::from(msg.header.scope) }
}

/// Dumps every link with its addresses.
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump_links(handle: &Handle) -> Result<Vec<Link>> {
    Ok(dump(handle).await?.links)
}

/// Dumps every link with its addresses (as [`dump`]) and the details of each address (flags
/// such as `IFA_F_TENTATIVE`, prefix length, scope) from the same `RTM_GETADDR` dump.
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump_links_and_addrs(handle: &Handle) -> Result<(Vec<Link>, AddrTable)> {
    let d = dump(handle).await?;
    Ok((d.links, d.addrs))
}

/// Dumps every link with its addresses, the same-netns veth peers (`IFLA_LINK`), and the
/// details of each address (`IFA_FLAGS`, prefix length, scope).
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump(handle: &Handle) -> Result<Dump> {
    let mut table = AddrTable::default();
    let mut links = std::collections::BTreeMap::new();
    let mut peers = std::collections::BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping links (RTM_GETLINK)")? {
        if let Update::NewLink { ifindex, name, flags, peer } = link_update(&msg, false) {
            links.insert(ifindex, Link { ifindex, name, flags, addrs: BTreeSet::new() });
            if let Some(p) = peer {
                peers.insert(ifindex, p);
                peers.insert(p, ifindex);
            }
        }
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping addresses (RTM_GETADDR)")? {
        if let Some((ifindex, addr)) = address_of(&msg) {
            if let Some(link) = links.get_mut(&ifindex) {
                link.addrs.insert(addr);
                table.insert(ifindex, addr, address_info(&msg));
            }
        }
    }
    Ok(Dump { links: links.into_values().collect(), peers, addrs: table })
}

/// Clears `IFF_UP` on a link (`RTM_NEWLINK` with `ifi_change = IFF_UP`).
///
/// # Errors
/// Netlink error (e.g. `ENODEV` when the link is gone).
pub async fn set_down(handle: &Handle, ifindex: IfIndex) -> Result<()> {
    handle.link().set(LinkUnspec::new_with_index(ifindex.0).down().build()).execute().await?;
    Ok(())
}

/// Deletes a link (`RTM_DELLINK`).
///
/// # Errors
/// Netlink error (e.g. `ENODEV` when the link is gone).
pub async fn delete(handle: &Handle, ifindex: IfIndex) -> Result<()> {
    handle.link().del(ifindex.0).execute().await?;
    Ok(())
}

/// The errno of a failed netlink request (`NLMSG_ERROR` code), if `err` is one.
pub fn errno_of(err: &anyhow::Error) -> Option<i32> {
    match err.downcast_ref::<rtnetlink::Error>()? {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A tun/tap link (`IFLA_LINKINFO` → `IFLA_INFO_KIND` "tun", set by the tun driver's
/// `rtnl_link_ops` for both tun and tap) with its `IFLA_INFO_DATA` decoded.
pub fn tun_link(msg: &LinkMessage) -> Option<TunLink> {
    use rtnetlink::packet_core::Nla;
    use rtnetlink::packet_route::link::{InfoData, InfoKind, LinkInfo};
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    if !infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))) {
        return None;
    }
    let info = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Tun(nlas)) => {
            let mut info = TunInfo::default();
            for nla in nlas {
                let mut value = vec![0u8; nla.value_len()];
                nla.emit_value(&mut value);
                info.apply(nla.kind(), &value);
            }
            Some(info)
        }
        _ => None,
    });
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    Some(TunLink { ifindex: IfIndex(msg.header.index), name, link_flags: msg.header.flags.bits(), info })
}

/// The rtnetlink kind of a link (`IFLA_INFO_KIND`: `veth`, `tun`, `wireguard`, …), `None` for
/// a device without `rtnl_link_ops` (a physical NIC): `rtnl_dellink()` refuses to delete those
/// with `EOPNOTSUPP`.
///
/// # Errors
/// Netlink error (`ENODEV` when the link is gone).
pub async fn link_kind(handle: &Handle, ifindex: IfIndex) -> Result<Option<String>> {
    use rtnetlink::packet_route::link::LinkInfo;
    let mut stream = handle.link().get().match_index(ifindex.0).execute();
    let mut kind = None;
    while let Some(msg) = stream.try_next().await.with_context(|| format!("reading link {ifindex} (RTM_GETLINK)"))? {
        for attr in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                kind = kind.or_else(|| {
                    infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    })
                });
            }
        }
    }
    Ok(kind)
}

/// Dumps the tun/tap links of the connection's netns.
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump_tun_links(handle: &Handle) -> Result<Vec<TunLink>> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping links (RTM_GETLINK)")? {
        out.extend(tun_link(&msg));
    }
    out.sort_by_key(|l| l.ifindex);
    Ok(out)
}

/// Largest `--rcvbuf` the kernel takes: `sk_setsockopt()` clamps the value to `INT_MAX / 2`
/// before doubling it.
pub const RCVBUF_MAX: usize = (i32::MAX / 2) as usize;

/// `net.core.rmem_max` (/proc/sys/net/core/rmem_max): the ceiling of `SO_RCVBUF`; above it only
/// `SO_RCVBUFFORCE` (CAP_NET_ADMIN) applies the size.
pub fn rmem_max() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?.trim().parse().ok()
}

/// Sets the receive buffer to `size` bytes: `SO_RCVBUF` up to `net.core.rmem_max` (which would
/// silently cap a larger request), `SO_RCVBUFFORCE` above it. Where `rmem_max` cannot be read
/// (before Linux 6.3 the sysctl exists only in the initial netns, so not inside `--netns X`),
/// `SO_RCVBUFFORCE` is tried first and `SO_RCVBUF` used when it is not permitted.
fn set_rcvbuf(socket: &Socket, size: usize) -> Result<()> {
    if size > RCVBUF_MAX {
        anyhow::bail!("receive buffer {size} bytes is above the kernel's limit of {RCVBUF_MAX}");
    }
    let max = rmem_max();
    let set = |opt: libc::c_int| -> std::io::Result<()> {
        let value = size as libc::c_int;
        // SAFETY: a c_int option value of the size passed.
        let r = unsafe {
            libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, opt, (&value as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    };
    let shown = max.map_or("unreadable in this netns".to_string(), |m| m.to_string());
    let context = |name: &str| format!("setting {name} to {size} bytes on the subscription socket (net.core.rmem_max is {shown}; above it CAP_NET_ADMIN is needed)");
    match max {
        Some(m) if size <= m => set(libc::SO_RCVBUF).with_context(|| context("SO_RCVBUF")),
        Some(_) => set(libc::SO_RCVBUFFORCE).with_context(|| context("SO_RCVBUFFORCE")),
        None => match set(libc::SO_RCVBUFFORCE) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => set(libc::SO_RCVBUF).with_context(|| context("SO_RCVBUF")),
            r => r.with_context(|| context("SO_RCVBUFFORCE")),
        },
    }
}

/// One receive from the subscription socket.
#[derive(Debug)]
pub enum Received {
    /// Messages reduced to updates (possibly none of interest).
    Updates(Vec<Update>),
    /// The kernel dropped messages for this socket (`ENOBUFS`): state must be re-dumped.
    Overrun,
}

/// A socket subscribed to link and address groups, with a chosen receive buffer.
pub struct Subscription {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl Subscription {
    /// Subscribes to `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR` in the
    /// calling thread's netns. `rcvbuf` is the requested `SO_RCVBUF` in bytes (the kernel
    /// doubles it and applies its own minimum); `None` keeps the default.
    ///
    /// # Errors
    /// Socket creation, bind or membership failed.
    pub fn open(rcvbuf: Option<usize>) -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink subscription socket")?;
        socket.bind(&SocketAddr::new(0, 0))?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
            socket.add_membership(group).with_context(|| format!("joining rtnetlink group {group}"))?;
        }
        if let Some(size) = rcvbuf {
            set_rcvbuf(&socket, size)?;
        }
        socket.set_non_blocking(true)?;
        // SAFETY: the socket is owned by the AsyncFd and its fd stays open until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the subscription socket with tokio: {e}"))?;
        Ok(Subscription { fd, buf: vec![0; 1 << 16] })
    }

    /// The effective receive buffer in bytes (`getsockopt(SO_RCVBUF)`: twice the request, at
    /// least the kernel's minimum); `None` if it cannot be read.
    pub fn rcvbuf(&self) -> Option<usize> {
        self.fd.get_ref().get_rx_buf_sz().ok()
    }

    /// Drops every datagram already queued (after `ENOBUFS` the queue holds messages older than
    /// the re-dump that follows; newer ones keep arriving and are applied on top of it).
    pub fn discard_pending(&mut self) -> usize {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut n = 0;
        loop {
            // SAFETY: non-blocking recv into our buffer.
            let r = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                return n;
            }
            n += 1;
        }
    }

    /// Waits for the next datagram and parses every message in it.
    ///
    /// # Errors
    /// Any receive error other than `ENOBUFS` (which is [`Received::Overrun`]).
    pub async fn recv(&mut self) -> Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            let res = guard.try_io(|inner| {
                // SAFETY: recv into an initialised buffer of buf.len() bytes.
                let n = unsafe {
                    libc::recv(inner.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Overrun),
                Ok(Err(e)) => return Err(e).context("receiving from the rtnetlink subscription"),
                Ok(Ok(n)) => return Ok(Received::Updates(parse_datagram(&self.buf[..n]))),
            }
        }
    }
}

/// Parses every netlink message of one datagram into updates.
pub fn parse_datagram(mut bytes: &[u8]) -> Vec<Update> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                match inner {
                    RouteNetlinkMessage::NewLink(m) => out.push(link_update(&m, false)),
                    RouteNetlinkMessage::DelLink(m) => out.push(link_update(&m, true)),
                    RouteNetlinkMessage::NewAddress(m) => {
                        if let Some((ifindex, addr)) = address_of(&m) {
                            out.push(Update::NewAddr { ifindex, addr });
                        }
                    }
                    RouteNetlinkMessage::DelAddress(m) => {
                        if let Some((ifindex, addr)) = address_of(&m) {
                            out.push(Update::DelAddr { ifindex, addr });
                        }
                    }
                    _ => {}
                }
            }
        }
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    out
}

/// How one link hangs together with others, from its `RTM_NEWLINK` attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRelations {
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name (`IFLA_IFNAME`).
    pub name: String,
    /// rtnetlink kind (`IFLA_INFO_KIND`: `veth`, `bridge`, `tun`…), `None` without `rtnl_link_ops`.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth the peer's ifindex (in the peer's netns), for a vlan/macvlan its
    /// lower device (`rtnl_fill_link_ifmap()` emits it only when `dev_get_iflink()` differs
    /// from the link's own ifindex; a peer in another netns may still have the same number).
    pub link: Option<IfIndex>,
    /// `IFLA_LINK_NETNSID`: present when `link` lives in another netns; the id is local to the
    /// netns of the connection (`peernet2id()`), so it cannot name that netns by itself.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge (bond, vrf…) this link is a port of.
    pub master: Option<IfIndex>,
}

/// Reduces an `RTM_NEWLINK` message to its [`LinkRelations`].
pub fn link_relations(msg: &LinkMessage) -> LinkRelations {
    use rtnetlink::packet_route::link::LinkInfo;
    let mut r = LinkRelations { ifindex: IfIndex(msg.header.index), name: String::new(), kind: None, link: None, link_netnsid: None, master: None };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => r.name = n.clone(),
            LinkAttribute::Link(i) if *i != 0 => r.link = Some(IfIndex(*i)),
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => r.link_netnsid = Some(*id),
            LinkAttribute::Controller(i) if *i != 0 => r.master = Some(IfIndex(*i)),
            LinkAttribute::LinkInfo(infos) => {
                r.kind = r.kind.take().or_else(|| {
                    infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    })
                });
            }
            _ => {}
        }
    }
    r
}

/// Dumps the [`LinkRelations`] of every link of the connection's netns, sorted by ifindex.
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump_relations(handle: &Handle) -> Result<Vec<LinkRelations>> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping links (RTM_GETLINK)")? {
        out.push(link_relations(&msg));
    }
    out.sort_by_key(|r| r.ifindex);
    Ok(out)
}
