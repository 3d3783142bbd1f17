//! [`SocketHealth`]: the caller's own sockets judged by `model::stranded::health` through
//! `engine::health::HealthTracker` (the judgement `ifsock sockets` and `watch` make), from
//! `getsockname(2)`, `SO_BINDTOIFINDEX` and rtnetlink instead of BPF iterators.
use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use futures::FutureExt;
use serde::Serialize;

use super::{Error, LinkChange, LinkChangeKind, LinkWatcher};
use crate::{
    engine::health::{HealthChange, HealthTracker},
    kernel::{clock::unix_ns, netlink, netns},
    model::{
        ids::{NetnsIno, SockInode},
        socket::{Protocol, Socket},
        stranded::{SeenDeletion, StrandReason, Stranded},
    },
};

/// Whether a socket can still receive what it was bound for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Health {
    /// Nothing known stops it from receiving.
    Healthy,
    /// Bound to a specific local address that no interface of its netns holds (usable: IPv6
    /// tentative or DAD-failed addresses do not count). The kernel keeps the socket, reports
    /// no error on it, and delivers nothing to it until the address is back.
    AddressGone,
    /// Bound to a device (`SO_BINDTODEVICE`) that is administratively down (`IFF_UP` clear).
    DeviceDown,
    /// Bound to a device that no longer exists. Permanent: a device recreated under the same
    /// name has a new ifindex, so the socket must be closed and bound again.
    DeviceDeleted,
}

impl Health {
    /// `healthy`, `address_gone`, `device_down` or `device_deleted` (the `stranded.reason`
    /// spelling of `ifsock sockets --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::AddressGone => "address_gone",
            Health::DeviceDown => "device_down",
            Health::DeviceDeleted => "device_deleted",
        }
    }

    /// Anything but [`Health::Healthy`].
    pub fn is_stranded(self) -> bool {
        self != Health::Healthy
    }

}

/// The API's spelling of the model's verdict (`None`: healthy).
pub(crate) fn health_of(s: Option<&Stranded>) -> Health {
    match s.map(|s| s.reason) {
        None => Health::Healthy,
        Some(StrandReason::AddressGone) => Health::AddressGone,
        Some(StrandReason::DeviceDown) => Health::DeviceDown,
        Some(StrandReason::DeviceDeleted) => Health::DeviceDeleted,
    }
}

/// A socket registered with [`SocketHealth::add`]; unique within one `SocketHealth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SocketId(pub u64);

/// A socket's health changed, serialised as
/// `{socket, from, to, ifindex, ifname, address, cause, ts_unix_ns}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthTransition {
    /// Which socket.
    pub socket: SocketId,
    /// Its health before.
    pub from: Health,
    /// Its health now.
    pub to: Health,
    /// The interface involved when stranded: the bound device, the deleted one, or the one that
    /// last held the address (when this watcher saw it).
    pub ifindex: Option<u32>,
    /// That interface's name, when known.
    pub ifname: Option<String>,
    /// The socket's local address when it is specific (not `0.0.0.0` / `::`).
    pub address: Option<IpAddr>,
    /// The interface change that made it: the last change of the burst judged that can
    /// (`down` for `device_down`; `deleted`/`moved_out` for `device_deleted`; the address's
    /// removal, or its interface's deletion, for `address_gone`; `up`, `created`, `recreated`,
    /// `moved_in` or the address's return for `healthy`), else the burst's last change;
    /// `None` from [`SocketHealth::refresh`] and [`SocketHealth::add`].
    pub cause: Option<LinkChange>,
    /// When it was judged: wall clock, ns since the Unix epoch.
    pub ts_unix_ns: u64,
}

/// The health of the caller's own sockets, now and as interfaces and addresses change.
///
/// Give it sockets with [`add`](Self::add) (anything [`AsFd`]: `std::net::UdpSocket`,
/// `tokio::net::UdpSocket`, `TcpListener`, an `OwnedFd`…); read [`health`](Self::health)
/// for the verdict now and [`recv`](Self::recv) (or [`into_stream`](Self::into_stream)) for
/// each transition, once.
/// A socket's facts are read when it is added (its local address from `getsockname(2)`, its
/// device from `getsockopt(SO_BINDTOIFINDEX)`, Linux >= 5.1, else `SO_BINDTODEVICE`): a socket
/// bound again is added again. The fd is not kept: closing the socket is the caller's business
/// ([`remove`](Self::remove) forgets it).
///
/// Sockets are judged in the netns of the thread that made the `SocketHealth`; it needs no
/// privilege (a [`LinkWatcher`] of that netns and one rtnetlink dump per burst of changes).
/// IPv6 addresses are judged with their DAD state as of the last dump; an address that leaves
/// `tentative` without any other change is noticed by the next reconcile (30 s).
#[derive(Debug)]
pub struct SocketHealth {
    watcher: LinkWatcher,
    rtnl: rtnetlink::Handle,
    netns: NetnsIno,
    tracker: HealthTracker,
    sockets: BTreeMap<SocketId, (Socket, Health)>,
    next_id: u64,
    pending: VecDeque<HealthTransition>,
    /// Changes seen but not judged yet (a judgement was cancelled, or is due).
    unjudged: Vec<LinkChange>,
    /// A watcher error met while draining a burst: returned after the burst is judged.
    failed: Option<Error>,
}

/// The change of `burst` that explains a transition to `to` of a socket tied to `ifindex`
/// (and bound to `address`): the last one that can, else the last one.
fn cause_of(burst: &[LinkChange], to: Health, ifindex: Option<u32>, address: Option<IpAddr>) -> Option<&LinkChange> {
    use LinkChangeKind as K;
    let fits = |c: &LinkChange| {
        let addr = c.address.is_some() && c.address == address;
        let here = Some(c.ifindex) == ifindex;
        match to {
            Health::DeviceDown => here && c.kind == K::Down,
            Health::DeviceDeleted => here && matches!(c.kind, K::Deleted | K::MovedOut),
            Health::AddressGone => (addr && c.kind == K::AddressRemoved) || (here && matches!(c.kind, K::Deleted | K::MovedOut | K::Down)),
            Health::Healthy => (addr && c.kind == K::AddressAdded) || (here && matches!(c.kind, K::Up | K::Created | K::Recreated | K::MovedIn)),
        }
    };
    burst.iter().rev().find(|c| fits(c)).or(burst.last())
}

impl SocketHealth {
    /// Starts watching the current netns (a [`LinkWatcher`] of every interface, reconcile
    /// every 30 s). No socket yet.
    ///
    /// # Errors
    /// As [`LinkWatcherBuilder::start`](super::LinkWatcherBuilder::start); [`Error::Netns`] when
    /// `/proc/thread-self/ns/net` cannot be read.
    pub async fn new() -> Result<Self, Error> {
        let watcher = LinkWatcher::builder().start().await?;
        let rtnl = netlink::connect().map_err(Error::netlink)?;
        let netns = netns::current_ino().map_err(|e| Error::Netns(format!("reading /proc/thread-self/ns/net: {e:#}")))?;
        Ok(SocketHealth { watcher, rtnl, netns, tracker: HealthTracker::new(), sockets: BTreeMap::new(), next_id: 1, pending: VecDeque::new(), unjudged: Vec::new(), failed: None })
    }

    /// Registers a TCP or UDP socket (IPv4 or IPv6) and judges it now (one rtnetlink dump).
    /// Returns its id and its health now. Transitions of other sockets that the fresh dump
    /// shows are queued for [`recv`](Self::recv).
    ///
    /// # Errors
    /// [`Error::Socket`] when `fd` is not an `AF_INET`/`AF_INET6` TCP or UDP socket or its
    /// options cannot be read; [`Error::Netlink`] when the dump fails.
    pub async fn add(&mut self, fd: impl AsFd) -> Result<(SocketId, Health), Error> {
        let id = SocketId(self.next_id);
        let socket = read_socket(fd.as_fd(), self.netns, id)?;
        self.next_id += 1;
        self.sockets.insert(id, (socket, Health::Healthy));
        let found = match self.judge(None).await {
            Ok(found) => found,
            Err(e) => {
                self.sockets.remove(&id);
                return Err(e);
            }
        };
        // The new socket's first verdict is its state, not a transition.
        self.pending.extend(found.into_iter().filter(|t| t.socket != id));
        Ok((id, self.health(id).unwrap_or(Health::Healthy)))
    }

    /// Forgets a socket (call it before closing the socket, or after). Returns whether it
    /// was registered.
    pub fn remove(&mut self, id: SocketId) -> bool {
        self.pending.retain(|t| t.socket != id);
        self.sockets.remove(&id).is_some()
    }

    /// The socket's health as last judged (at [`add`](Self::add), or after the changes
    /// [`recv`](Self::recv) has consumed); `None` for an unknown id.
    pub fn health(&self, id: SocketId) -> Option<Health> {
        self.sockets.get(&id).map(|(_, h)| *h)
    }

    /// The transitions as a `Stream` of `Result<`[`HealthTransition`]`, `[`Error`]`>`, for
    /// stream combinators; it owns the `SocketHealth`, so register the sockets first (use
    /// [`recv`](Self::recv) in a `tokio::select!` loop to keep adding and removing).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<HealthTransition, Error>> {
        futures::stream::unfold(self, |mut h| async move { h.recv().await.map(|t| (t, h)) })
    }

    /// Every registered socket with its health as last judged, by id.
    pub fn all(&self) -> Vec<(SocketId, Health)> {
        self.sockets.iter().map(|(id, (_, h))| (*id, *h)).collect()
    }

    /// Judges every socket now from a fresh dump and returns the transitions that finds
    /// (normally none: [`recv`](Self::recv) reports transitions as changes arrive). They are
    /// returned here only, not again by `recv`.
    ///
    /// # Errors
    /// [`Error::Netlink`] when the dump fails.
    pub async fn refresh(&mut self) -> Result<Vec<HealthTransition>, Error> {
        self.judge(None).await
    }

    /// The next transition of a registered socket: waits for interface changes, judges every
    /// socket after each burst of them, and returns each transition once. `None` never comes
    /// while the watcher runs; an `Err` means the watcher stopped (make a new `SocketHealth`).
    /// Cancel-safe: a change consumed by a cancelled call is judged by the next one.
    pub async fn recv(&mut self) -> Option<Result<HealthTransition, Error>> {
        loop {
            if let Some(t) = self.pending.pop_front() {
                return Some(Ok(t));
            }
            if !self.unjudged.is_empty() {
                let burst = self.unjudged.clone();
                match self.judge(Some(&burst)).await {
                    Ok(found) => {
                        self.unjudged.clear();
                        self.pending.extend(found);
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            if let Some(e) = self.failed.take() {
                return Some(Err(e));
            }
            let first = self.watcher.recv().await?;
            self.take(first);
            // The rest of the burst, already queued: one dump judges it all.
            while self.failed.is_none() {
                match self.watcher.recv().now_or_never() {
                    Some(Some(next)) => self.take(next),
                    _ => break,
                }
            }
        }
    }

    fn take(&mut self, change: Result<LinkChange, Error>) {
        match change {
            Ok(c) => {
                if c.kind == LinkChangeKind::Deleted {
                    // Names the deleted ifindex for `device_deleted` (the kernel forgets it).
                    self.tracker.saw_deletion(SeenDeletion { netns: self.netns, ifindex: crate::model::ids::IfIndex(c.ifindex), name: c.name.clone(), at_unix_ns: c.ts_unix_ns });
                }
                self.unjudged.push(c);
            }
            Err(e) => self.failed = Some(e),
        }
    }

    /// One dump, then the tracker's verdict on every registered socket.
    async fn judge(&mut self, burst: Option<&[LinkChange]>) -> Result<Vec<HealthTransition>, Error> {
        if self.sockets.is_empty() {
            // Nothing to judge; `add` dumps for itself.
            return Ok(Vec::new());
        }
        let dump = netlink::dump(&self.rtnl).await.map_err(Error::netlink)?;
        let sockets: Vec<Socket> = self.sockets.values().map(|(s, _)| s.clone()).collect();
        let now = unix_ns();
        let changes = self.tracker.update(self.netns, &sockets, &dump.links, &dump.addrs, now);
        let mut out = Vec::new();
        for c in changes {
            let (socket, stranded) = match &c {
                HealthChange::Stranded { socket, stranded } => (socket, Some(stranded)),
                HealthChange::Recovered { socket, .. } => (socket, None),
            };
            let id = SocketId(socket.sk);
            let Some(entry) = self.sockets.get_mut(&id) else { continue };
            let to = health_of(stranded);
            let from = std::mem::replace(&mut entry.1, to);
            let was = match &c {
                HealthChange::Recovered { was, .. } => Some(was),
                HealthChange::Stranded { .. } => None,
            };
            let about = stranded.or(was);
            let ifindex = about.and_then(|s| s.ifindex).map(|i| i.0);
            let address = about.and_then(|s| s.address);
            let cause = burst.and_then(|b| cause_of(b, to, ifindex, address)).cloned();
            out.push(HealthTransition {
                socket: id,
                from,
                to,
                ifindex,
                ifname: about.and_then(|s| s.ifname.clone()),
                address,
                cause,
                ts_unix_ns: now,
            });
        }
        Ok(out)
    }
}

fn sockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option into an int of that size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(v) }
}

/// The facts of one caller socket, as the model's [`Socket`] (fields the judgement does not
/// read are zero; `sk` holds the id so the tracker tells registered sockets apart).
fn read_socket(fd: BorrowedFd<'_>, netns: NetnsIno, id: SocketId) -> Result<Socket, Error> {
    let err = |what: &str, e: std::io::Error| Error::Socket(format!("{what}: {e} (give a TCP or UDP socket's fd)"));
    let domain = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| err("getsockopt(SO_DOMAIN)", e))?;
    let protocol = match sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(|e| err("getsockopt(SO_PROTOCOL)", e))? {
        libc::IPPROTO_UDP => Protocol::Udp,
        libc::IPPROTO_TCP => Protocol::Tcp,
        p => return Err(Error::Socket(format!("protocol {p} is neither TCP nor UDP"))),
    };
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into the storage.
    if unsafe { libc::getsockname(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) } < 0 {
        return Err(err("getsockname", std::io::Error::last_os_error()));
    }
    let (family, local_addr, local_port, v4_mapped) = match domain {
        libc::AF_INET => {
            // SAFETY: AF_INET: the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            (4, IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))), u16::from_be(sin.sin_port), false)
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6: the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            let v6 = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // As `Socket::from_record`: a v4-mapped local address is judged as IPv4.
            match v6.to_ipv4_mapped() {
                Some(v4) if !v6.is_unspecified() => (6, IpAddr::V4(v4), u16::from_be(sin6.sin6_port), true),
                _ => (6, IpAddr::V6(v6), u16::from_be(sin6.sin6_port), false),
            }
        }
        d => return Err(Error::Socket(format!("address family {d} is neither AF_INET nor AF_INET6"))),
    };
    let bound_dev_if = bound_ifindex(fd)?;
    // SAFETY: stat is plain old data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a stat struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(err("fstat", std::io::Error::last_os_error()));
    }
    let unspecified = if family == 4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    Ok(Socket {
        protocol,
        family,
        v4_mapped,
        local_addr,
        local_port,
        remote_addr: unspecified,
        remote_port: 0,
        state: "",
        inode: SockInode(st.st_ino),
        netns,
        uid: 0,
        bound_dev_if,
        pktinfo: false,
        rx_queue: 0,
        drops: 0,
        owners: Vec::new(),
        cookie: 0,
        sk: id.0,
    })
}

/// `sk_bound_dev_if`: `getsockopt(SO_BINDTOIFINDEX)` (Linux >= 5.1); before, the name from
/// `SO_BINDTODEVICE` resolved to its ifindex (a device already deleted then reads as unbound,
/// since the kernel answers `ENXIO` without the ifindex).
fn bound_ifindex(fd: BorrowedFd<'_>) -> Result<u32, Error> {
    match sockopt_int(fd, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX) {
        Ok(i) => Ok(i as u32),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            let mut name = [0u8; libc::IFNAMSIZ];
            let mut len = name.len() as libc::socklen_t;
            // SAFETY: at most IFNAMSIZ bytes into the buffer.
            let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, name.as_mut_ptr().cast(), &mut len) };
            if r < 0 || len == 0 || name[0] == 0 {
                return Ok(0);
            }
            // SAFETY: the kernel NUL-terminates the name within IFNAMSIZ.
            Ok(unsafe { libc::if_nametoindex(name.as_ptr().cast()) })
        }
        Err(e) => Err(Error::Socket(format!("getsockopt(SO_BINDTOIFINDEX): {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: LinkChangeKind, ifindex: u32, address: Option<&str>) -> LinkChange {
        LinkChange { kind, source: crate::api::ChangeSource::Netlink, ifindex, name: format!("if{ifindex}"), old_ifindex: None, old_name: None, address: address.map(|a| a.parse().unwrap()), netns: 1, ts_unix_ns: 0 }
    }

    #[test]
    fn the_cause_is_the_change_that_can_make_the_transition() {
        use LinkChangeKind as K;
        // A down also drops the IPv6 link-local address, reported after it.
        let burst = [change(K::Down, 3, None), change(K::CarrierDown, 3, None), change(K::AddressRemoved, 3, Some("fe80::1"))];
        assert_eq!(cause_of(&burst, Health::DeviceDown, Some(3), None).map(|c| c.kind), Some(K::Down));
        let burst = [change(K::AddressRemoved, 3, Some("10.0.0.1")), change(K::AddressRemoved, 3, Some("fe80::1"))];
        let addr = Some("10.0.0.1".parse().unwrap());
        assert_eq!(cause_of(&burst, Health::AddressGone, None, addr).and_then(|c| c.address), addr);
        let burst = [change(K::AddressRemoved, 4, Some("10.0.0.2")), change(K::Deleted, 4, None), change(K::Created, 9, None)];
        assert_eq!(cause_of(&burst, Health::DeviceDeleted, Some(4), None).map(|c| c.kind), Some(K::Deleted));
        // Nothing fits (a reconcile found it): the last change of the burst.
        assert_eq!(cause_of(&burst, Health::Healthy, Some(7), None).map(|c| c.ifindex), Some(9));
    }

    #[test]
    fn health_names_are_the_stranded_reasons() {
        for r in [StrandReason::AddressGone, StrandReason::DeviceDown, StrandReason::DeviceDeleted] {
            let s = Stranded { reason: r, ifindex: None, ifname: None, now_ifindex: None, address: None, since_unix_ns: None };
            assert_eq!(health_of(Some(&s)).as_str(), r.name());
        }
        assert_eq!(health_of(None), Health::Healthy);
    }
}
