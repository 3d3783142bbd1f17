//! The library API: what a daemon links against. Re-exported at the crate root; see the crate
//! documentation for the overview and the example.
//!
//! Everything here is rtnetlink plus a few socket options, so it runs without root and without
//! BPF; only [`Probes`] (feature `probes`) needs privileges. The types are the API's own, not
//! the engine's, so the engine can change without breaking callers.
use std::{net::IpAddr, path::PathBuf};

use serde::Serialize;

use crate::{engine::watch::Source, model::link::ChangeKind};

mod health;
#[cfg(feature = "probes")]
mod probes;
mod watcher;

pub use health::{Health, HealthTransition, SocketHealth, SocketId};
#[cfg(feature = "probes")]
pub use probes::{Probes, ProbesError, SocketSnapshot};
pub use watcher::{LinkWatcher, LinkWatcherBuilder, DEFAULT_RECONCILE};

/// An error of the library API. Every message names the cause and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or entering the network namespace failed: the name or path does not exist, or
    /// entering another netns was refused (`setns(2)` needs CAP_SYS_ADMIN over it; the current
    /// netns needs nothing).
    #[error("network namespace: {0}")]
    Netns(String),
    /// An rtnetlink subscription, dump or receive failed (the message holds the errno). A
    /// watcher that yields this has stopped: start a new one (netbird's "restart needed").
    #[error("rtnetlink: {0}")]
    Netlink(String),
    /// A socket given to [`SocketHealth::add`] could not be read (`getsockname`,
    /// `getsockopt`, `fstat`), or is not an IPv4/IPv6 TCP or UDP socket.
    #[error("socket: {0}")]
    Socket(String),
    /// The call needs a tokio runtime (`#[tokio::main]`, or `Runtime::block_on`) with the
    /// `net` and `time` drivers enabled (`enable_all()`).
    #[error("no tokio runtime: call this from inside one (#[tokio::main], or Runtime::block_on with enable_all())")]
    NoRuntime,
}

impl Error {
    pub(crate) fn netlink(e: anyhow::Error) -> Self {
        Error::Netlink(format!("{e:#}"))
    }
}

/// Which network namespace to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Netns {
    /// The netns of the thread that starts the watcher (`/proc/thread-self/ns/net`). Needs no
    /// privilege.
    #[default]
    Current,
    /// A named netns, `/run/netns/NAME` (`ip netns add NAME`). Entering it needs CAP_SYS_ADMIN.
    Named(String),
    /// A netns file: `/proc/PID/ns/net` or a bind mount of one. Entering it needs
    /// CAP_SYS_ADMIN (and reading another user's `/proc/PID/ns/net` CAP_SYS_PTRACE).
    Path(PathBuf),
}

/// Where a change was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeSource {
    /// A live rtnetlink notification (`RTM_NEWLINK`, `RTM_DELLINK`, `RTM_NEWADDR`,
    /// `RTM_DELADDR`).
    Netlink,
    /// A re-dump after the kernel dropped notifications for this watcher (`ENOBUFS` on the
    /// subscription socket): the change happened while notifications were lost, and is
    /// reported as the difference between the last known state and the dump.
    Resync,
    /// The periodic re-dump ([`LinkWatcherBuilder::reconcile_every`]) found a difference that
    /// no notification reported.
    Reconcile,
}

impl ChangeSource {
    /// `netlink`, `resync` or `reconcile`: the JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Netlink => "netlink",
            ChangeSource::Resync => "resync",
            ChangeSource::Reconcile => "reconcile",
        }
    }

    pub(crate) fn from_engine(s: Source) -> Self {
        match s {
            Source::Resync => ChangeSource::Resync,
            Source::Reconcile => ChangeSource::Reconcile,
            // The library loads no probes and follows one netns: the others do not occur.
            _ => ChangeSource::Netlink,
        }
    }
}

/// What happened to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkChangeKind {
    /// A new ifindex under a name not deleted before in this watcher's lifetime.
    Created,
    /// The ifindex is gone (`RTM_DELLINK` without `IFLA_NEW_NETNSID`).
    Deleted,
    /// A new ifindex under the name of an interface deleted earlier; the old ifindex is in
    /// [`LinkChange::old_ifindex`]. Always follows that interface's [`Deleted`](Self::Deleted).
    Recreated,
    /// Same ifindex, new name; the old name is in [`LinkChange::old_name`].
    Renamed,
    /// Moved to another netns (`RTM_DELLINK` with `IFLA_NEW_NETNSID`): gone from this one.
    MovedOut,
    /// Arrived from another followed netns. A [`LinkWatcher`] follows one netns, so it reports
    /// an arrival as [`Created`](Self::Created) (or [`Recreated`](Self::Recreated) under a
    /// name deleted before); match this too, for watchers of several namespaces to come.
    MovedIn,
    /// `IFF_UP` set (administratively up).
    Up,
    /// `IFF_UP` cleared.
    Down,
    /// `IFF_LOWER_UP` set: the driver reports carrier.
    CarrierUp,
    /// `IFF_LOWER_UP` cleared.
    CarrierDown,
    /// An address was added; it is in [`LinkChange::address`].
    AddressAdded,
    /// An address was removed; it is in [`LinkChange::address`].
    AddressRemoved,
}

impl LinkChangeKind {
    /// The snake_case name (`carrier_down`), as in JSON and in `ifsock watch`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkChangeKind::Created => "created",
            LinkChangeKind::Deleted => "deleted",
            LinkChangeKind::Recreated => "recreated",
            LinkChangeKind::Renamed => "renamed",
            LinkChangeKind::MovedOut => "moved_out",
            LinkChangeKind::MovedIn => "moved_in",
            LinkChangeKind::Up => "up",
            LinkChangeKind::Down => "down",
            LinkChangeKind::CarrierUp => "carrier_up",
            LinkChangeKind::CarrierDown => "carrier_down",
            LinkChangeKind::AddressAdded => "address_added",
            LinkChangeKind::AddressRemoved => "address_removed",
        }
    }

    pub(crate) fn from_model(k: ChangeKind) -> Self {
        match k {
            ChangeKind::Created => LinkChangeKind::Created,
            ChangeKind::Deleted => LinkChangeKind::Deleted,
            ChangeKind::Recreated => LinkChangeKind::Recreated,
            ChangeKind::Renamed => LinkChangeKind::Renamed,
            ChangeKind::MovedOut => LinkChangeKind::MovedOut,
            ChangeKind::MovedIn => LinkChangeKind::MovedIn,
            ChangeKind::Up => LinkChangeKind::Up,
            ChangeKind::Down => LinkChangeKind::Down,
            ChangeKind::CarrierUp => LinkChangeKind::CarrierUp,
            ChangeKind::CarrierDown => LinkChangeKind::CarrierDown,
            ChangeKind::AddressAdded => LinkChangeKind::AddressAdded,
            ChangeKind::AddressRemoved => LinkChangeKind::AddressRemoved,
        }
    }
}

/// One interface change, serialised as
/// `{event, source, ifindex, name, old_ifindex, old_name, address, netns, ts_unix_ns}`
/// (the fields of `ifsock watch --json`'s `change` records that exist without probes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LinkChange {
    /// What happened (JSON `event`).
    #[serde(rename = "event")]
    pub kind: LinkChangeKind,
    /// Where it was learned.
    pub source: ChangeSource,
    /// The interface's ifindex (`ifi_index`; the new one for `recreated`). Unique within one
    /// netns only.
    pub ifindex: u32,
    /// Its name (`IFLA_IFNAME`; the new one for `renamed`), at most 15 bytes.
    pub name: String,
    /// `recreated`: the ifindex the deleted interface of this name had.
    pub old_ifindex: Option<u32>,
    /// `renamed`: the previous name.
    pub old_name: Option<String>,
    /// `address_added` / `address_removed`: the address (`IFA_LOCAL`, else `IFA_ADDRESS`).
    pub address: Option<IpAddr>,
    /// Inode of the watched netns (`net.ns.inum`, as `stat -L /proc/self/ns/net` shows).
    pub netns: u32,
    /// When the watcher learned it: wall clock, ns since the Unix epoch.
    pub ts_unix_ns: u64,
}

/// One interface as dumped at start ([`LinkWatcher::initial`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LinkInfo {
    /// ifindex.
    pub ifindex: u32,
    /// Name (`IFLA_IFNAME`).
    pub name: String,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// `IFF_LOWER_UP`: carrier.
    pub carrier: bool,
    /// Its addresses (`RTM_GETADDR`), sorted.
    pub addresses: Vec<IpAddr>,
}

impl LinkInfo {
    pub(crate) fn from_model(l: &crate::model::link::Link) -> Self {
        LinkInfo { ifindex: l.ifindex.0, name: l.name.clone(), up: l.is_up(), carrier: l.has_carrier(), addresses: l.addrs.iter().copied().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_the_names_of_watch_json() {
        for k in [
            ChangeKind::Created,
            ChangeKind::Deleted,
            ChangeKind::Recreated,
            ChangeKind::Renamed,
            ChangeKind::MovedOut,
            ChangeKind::MovedIn,
            ChangeKind::Up,
            ChangeKind::Down,
            ChangeKind::CarrierUp,
            ChangeKind::CarrierDown,
            ChangeKind::AddressAdded,
            ChangeKind::AddressRemoved,
        ] {
            let api = LinkChangeKind::from_model(k);
            assert_eq!(api.as_str(), k.name());
            assert_eq!(serde_json::to_value(api).unwrap(), k.name());
        }
        for (s, name) in [(Source::Netlink, "netlink"), (Source::Resync, "resync"), (Source::Reconcile, "reconcile")] {
            assert_eq!(ChangeSource::from_engine(s).as_str(), name);
            assert_eq!(s.name(), name);
        }
    }
}
