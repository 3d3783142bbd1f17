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
    link::{AddrInfo, AddrTable, Link, Update},
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
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::NewNetnsId(_) => moved = true,
            _ => {}
        }
    }
    if deleted {
        Update::DelLink { ifindex, name, moved }
    } else {
        Update::NewLink { ifindex, name, flags: msg.header.flags.bits() }
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
    Ok(dump_links_and_addrs(handle).await?.0)
}

/// Dumps every link with its addresses, and the details of each address (flags such as
/// `IFA_F_TENTATIVE`, prefix length, scope) from the same `RTM_GETADDR` dump.
///
/// # Errors
/// The dump failed (netlink error).
pub async fn dump_links_and_addrs(handle: &Handle) -> Result<(Vec<Link>, AddrTable)> {
    let mut table = AddrTable::default();
    let mut links = std::collections::BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.context("dumping links (RTM_GETLINK)")? {
        if let Update::NewLink { ifindex, name, flags } = link_update(&msg, false) {
            links.insert(ifindex, Link { ifindex, name, flags, addrs: BTreeSet::new() });
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
    Ok((links.into_values().collect(), table))
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
            socket.set_rx_buf_sz(size).context("setting SO_RCVBUF on the subscription socket")?;
        }
        socket.set_non_blocking(true)?;
        // SAFETY: the socket is owned by the AsyncFd and its fd stays open until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the subscription socket with tokio: {e}"))?;
        Ok(Subscription { fd, buf: vec![0; 1 << 16] })
    }

    /// The effective receive buffer in bytes (`SO_RCVBUF` as the kernel reports it).
    pub fn rcvbuf(&self) -> usize {
        self.fd.get_ref().get_rx_buf_sz().unwrap_or(0)
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
