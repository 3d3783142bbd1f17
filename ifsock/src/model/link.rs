//! Interface state of one netns and the classification of its changes.
//!
//! Live rtnetlink messages are applied with [`LinkTable::apply`]; a full re-dump (after
//! `ENOBUFS`, or the periodic reconcile) is compared with [`LinkTable::diff_and_replace`]. Both produce the
//! same [`Change`] kinds, so a change found late is reported exactly as if it had been seen live.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use super::ids::IfIndex;

/// `IFF_UP` (include/uapi/linux/if.h): administratively up.
pub const IFF_UP: u32 = 0x1;
/// `IFF_LOWER_UP`: carrier (driver signals L1 up).
pub const IFF_LOWER_UP: u32 = 0x10000;

/// `IFF_LOOPBACK`: the loopback device (its `127.0.0.1/8` makes the whole prefix local).
pub const IFF_LOOPBACK: u32 = 0x8;
/// `IFA_F_OPTIMISTIC` (include/uapi/linux/if_addr.h): optimistic DAD (RFC 4429); usable while
/// `IFA_F_TENTATIVE` is still set.
pub const IFA_F_OPTIMISTIC: u32 = 0x04;
/// `IFA_F_DADFAILED`: IPv6 duplicate address detection failed.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// `IFA_F_TENTATIVE`: IPv6 DAD still running; the address cannot be used as a source or bound.
pub const IFA_F_TENTATIVE: u32 = 0x40;

/// What an `RTM_NEWADDR` says about one address beyond its value: `ifa_flags` (the 32-bit
/// `IFA_FLAGS` attribute when present, since 3.14, else the 8-bit header field), `ifa_prefixlen`
/// and `ifa_scope` (`RT_SCOPE_*`: 0 universe, 200 site, 253 link, 254 host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct AddrInfo {
    /// `IFA_F_*` bits.
    pub flags: u32,
    /// Prefix length in bits.
    pub prefix_len: u8,
    /// `ifa_scope`.
    pub scope: u8,
}

impl AddrInfo {
    /// False while IPv6 DAD is running (unless optimistic) or after it failed: the kernel
    /// refuses the address (`ipv6_chk_addr()` skips tentative non-optimistic addresses), so a
    /// socket bound to it receives nothing.
    pub fn usable(&self) -> bool {
        let tentative = self.flags & IFA_F_TENTATIVE != 0 && self.flags & IFA_F_OPTIMISTIC == 0;
        !tentative && self.flags & IFA_F_DADFAILED == 0
    }
}

/// Address details of one netns keyed by (ifindex, address), beside [`Link::addrs`] (which only
/// says which addresses exist). Filled from the same `RTM_GETADDR` dump; an address without an
/// entry is taken as usable with an unknown prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrTable {
    entries: BTreeMap<(IfIndex, IpAddr), AddrInfo>,
}

impl AddrTable {
    /// Records the details of `addr` on `ifindex` (replacing earlier ones).
    pub fn insert(&mut self, ifindex: IfIndex, addr: IpAddr, info: AddrInfo) {
        self.entries.insert((ifindex, addr), info);
    }

    /// Forgets `addr` on `ifindex` (`RTM_DELADDR`).
    pub fn remove(&mut self, ifindex: IfIndex, addr: IpAddr) {
        self.entries.remove(&(ifindex, addr));
    }

    /// Details of `addr` on `ifindex`, if known.
    pub fn get(&self, ifindex: IfIndex, addr: IpAddr) -> Option<AddrInfo> {
        self.entries.get(&(ifindex, addr)).copied()
    }

    /// Whether `addr` on `ifindex` can be used (unknown entries count as usable).
    pub fn usable(&self, ifindex: IfIndex, addr: IpAddr) -> bool {
        self.get(ifindex, addr).is_none_or(|i| i.usable())
    }
}

/// How many deleted names are remembered to recognise a recreation.
const DELETED_MEMORY: usize = 4096;

/// One interface as last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name (`IFLA_IFNAME`).
    pub name: String,
    /// `ifi_flags` (`IFF_*`).
    pub flags: u32,
    /// Addresses (`RTM_NEWADDR` with this ifindex).
    pub addrs: BTreeSet<IpAddr>,
}

impl Link {
    /// Administratively up (`IFF_UP`).
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
    /// Carrier up (`IFF_LOWER_UP`).
    pub fn has_carrier(&self) -> bool {
        self.flags & IFF_LOWER_UP != 0
    }
}

/// An rtnetlink message reduced to what classification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// `RTM_NEWLINK` (creation or any attribute/flag change).
    NewLink {
        /// ifindex.
        ifindex: IfIndex,
        /// `IFLA_IFNAME`.
        name: String,
        /// `ifi_flags`.
        flags: u32,
        /// The other end of a veth pair in the same netns (`IFLA_LINK` without
        /// `IFLA_LINK_NETNSID`; `veth_get_iflink()` reports the peer's ifindex once the pair is
        /// linked, which is after the peer's own first `RTM_NEWLINK`).
        peer: Option<IfIndex>,
    },
    /// `RTM_DELLINK`; `moved` when it carries `IFLA_NEW_NETNSID` (a netns move, not a deletion).
    DelLink {
        /// ifindex.
        ifindex: IfIndex,
        /// `IFLA_IFNAME`.
        name: String,
        /// Moved to another netns.
        moved: bool,
    },
    /// `RTM_NEWADDR`.
    NewAddr {
        /// ifindex.
        ifindex: IfIndex,
        /// `IFA_LOCAL`, else `IFA_ADDRESS`.
        addr: IpAddr,
    },
    /// `RTM_DELADDR`.
    DelAddr {
        /// ifindex.
        ifindex: IfIndex,
        /// Address.
        addr: IpAddr,
    },
}

/// Kinds of interface change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new ifindex with a name not recently deleted.
    Created,
    /// The ifindex disappeared.
    Deleted,
    /// Same ifindex, new name.
    Renamed,
    /// Same name as a deleted interface, new ifindex.
    Recreated,
    /// Moved to another netns (`RTM_DELLINK` with `IFLA_NEW_NETNSID`).
    MovedOut,
    /// Arrived from another netns.
    MovedIn,
    /// `IFF_UP` set.
    Up,
    /// `IFF_UP` cleared.
    Down,
    /// `IFF_LOWER_UP` set.
    CarrierUp,
    /// `IFF_LOWER_UP` cleared.
    CarrierDown,
    /// Address added.
    AddressAdded,
    /// Address removed.
    AddressRemoved,
}

/// One classified change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happened (JSON field `event`).
    #[serde(rename = "event")]
    pub kind: ChangeKind,
    /// ifindex (the new one for `recreated`).
    pub ifindex: IfIndex,
    /// Name (the new one for `renamed`).
    pub name: String,
    /// Previous name, for `renamed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_name: Option<String>,
    /// Previous ifindex, for `recreated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_ifindex: Option<IfIndex>,
    /// Address, for `address_added` / `address_removed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
}

impl ChangeKind {
    /// The snake_case name used in JSON and in the table (`carrier_down`).
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Renamed => "renamed",
            ChangeKind::Recreated => "recreated",
            ChangeKind::MovedOut => "moved_out",
            ChangeKind::MovedIn => "moved_in",
            ChangeKind::Up => "up",
            ChangeKind::Down => "down",
            ChangeKind::CarrierUp => "carrier_up",
            ChangeKind::CarrierDown => "carrier_down",
            ChangeKind::AddressAdded => "address_added",
            ChangeKind::AddressRemoved => "address_removed",
        }
    }
}

impl Change {
    fn new(kind: ChangeKind, ifindex: IfIndex, name: &str) -> Self {
        Change { kind, ifindex, name: name.to_string(), old_name: None, old_ifindex: None, address: None }
    }
}

/// A full dump of one netns: links with their addresses, and veth peers within the netns
/// (`IFLA_LINK`, ifindex → peer ifindex).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// Links with addresses.
    pub links: Vec<Link>,
    /// Same-netns peers (`IFLA_LINK`), both directions when both ends were dumped.
    pub peers: BTreeMap<IfIndex, IfIndex>,
    /// Address details (flags, prefix length, scope) of the dumped addresses.
    pub addrs: AddrTable,
}

/// Interfaces of one netns, keyed by ifindex, with recently deleted names.
#[derive(Clone, Debug, Default)]
pub struct LinkTable {
    links: BTreeMap<IfIndex, Link>,
    /// Same-netns veth peers (`IFLA_LINK`), kept after a deletion until the peer goes too so
    /// that the second end of a pair deleted by one request can be tied to the first.
    peers: BTreeMap<IfIndex, IfIndex>,
    deleted: HashMap<String, IfIndex>,
    deleted_order: VecDeque<String>,
}

impl LinkTable {
    /// A table from a dump (links with their addresses).
    pub fn from_links(links: impl IntoIterator<Item = Link>) -> Self {
        LinkTable { links: links.into_iter().map(|l| (l.ifindex, l)).collect(), ..Default::default() }
    }

    /// Every known link.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// A link by ifindex.
    pub fn get(&self, ifindex: IfIndex) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    /// The ifindex a name had when it was last deleted.
    pub fn deleted_ifindex(&self, name: &str) -> Option<IfIndex> {
        self.deleted.get(name).copied()
    }

    /// The other end of a veth pair in this netns (`IFLA_LINK`), also just after either end
    /// was deleted.
    pub fn peer_of(&self, ifindex: IfIndex) -> Option<IfIndex> {
        self.peers.get(&ifindex).copied()
    }

    /// Records the peers of a dump, replacing the known ones (call after the changes of
    /// [`LinkTable::diff_and_replace`] were attributed: they may need the old pairs).
    pub fn set_peers(&mut self, peers: BTreeMap<IfIndex, IfIndex>) {
        self.peers = peers;
    }

    fn note_peer(&mut self, ifindex: IfIndex, peer: Option<IfIndex>) {
        if let Some(p) = peer.filter(|p| p.0 != 0 && *p != ifindex) {
            self.peers.insert(ifindex, p);
            self.peers.insert(p, ifindex);
        }
    }

    fn remember_deleted(&mut self, name: &str, ifindex: IfIndex) {
        if self.deleted.insert(name.to_string(), ifindex).is_none() {
            self.deleted_order.push_back(name.to_string());
            if self.deleted_order.len() > DELETED_MEMORY {
                if let Some(old) = self.deleted_order.pop_front() {
                    self.deleted.remove(&old);
                }
            }
        }
    }

    fn forget_deleted(&mut self, name: &str) -> Option<IfIndex> {
        let old = self.deleted.remove(name);
        if old.is_some() {
            self.deleted_order.retain(|n| n != name);
        }
        old
    }

    /// Applies one live message and returns the changes it represents (often none: most
    /// `RTM_NEWLINK` messages repeat the state).
    pub fn apply(&mut self, update: Update) -> Vec<Change> {
        match update {
            Update::NewLink { ifindex, name, flags, peer } => {
                self.note_peer(ifindex, peer);
                self.apply_newlink(ifindex, name, flags)
            }
            Update::DelLink { ifindex, name, moved } => {
                let Some(link) = self.links.remove(&ifindex) else {
                    return Vec::new();
                };
                // Keep the pair while its other end still exists (it goes next, by the same request).
                self.prune_peers_except(ifindex);
                let kind = if moved { ChangeKind::MovedOut } else { ChangeKind::Deleted };
                let name = if name.is_empty() { link.name } else { name };
                if !moved {
                    self.remember_deleted(&name, ifindex);
                }
                vec![Change::new(kind, ifindex, &name)]
            }
            Update::NewAddr { ifindex, addr } => match self.links.get_mut(&ifindex) {
                Some(link) if !link.addrs.contains(&addr) => {
                    link.addrs.insert(addr);
                    let mut c = Change::new(ChangeKind::AddressAdded, ifindex, &link.name);
                    c.address = Some(addr);
                    vec![c]
                }
                _ => Vec::new(),
            },
            Update::DelAddr { ifindex, addr } => match self.links.get_mut(&ifindex) {
                Some(link) if link.addrs.contains(&addr) => {
                    link.addrs.remove(&addr);
                    let mut c = Change::new(ChangeKind::AddressRemoved, ifindex, &link.name);
                    c.address = Some(addr);
                    vec![c]
                }
                _ => Vec::new(),
            },
        }
    }

    /// Drops peer entries whose both ends are gone, except the pair of `just_deleted` (its
    /// other end is about to be deleted by the same request).
    fn prune_peers_except(&mut self, just_deleted: IfIndex) {
        let keep = self.peers.get(&just_deleted).copied();
        let links = &self.links;
        self.peers.retain(|a, b| {
            links.contains_key(a) || links.contains_key(b) || *a == just_deleted || Some(*a) == keep
        });
    }

    fn apply_newlink(&mut self, ifindex: IfIndex, name: String, flags: u32) -> Vec<Change> {
        match self.links.get_mut(&ifindex) {
            None => {
                let mut change = Change::new(ChangeKind::Created, ifindex, &name);
                if let Some(old) = self.forget_deleted(&name) {
                    if old != ifindex {
                        change.kind = ChangeKind::Recreated;
                        change.old_ifindex = Some(old);
                    }
                }
                let mut out = vec![change];
                let link = Link { ifindex, name, flags, addrs: BTreeSet::new() };
                out.extend(flag_changes(0, &link));
                self.links.insert(ifindex, link);
                out
            }
            Some(link) => {
                let mut out = Vec::new();
                if link.name != name {
                    let mut c = Change::new(ChangeKind::Renamed, ifindex, &name);
                    c.old_name = Some(std::mem::replace(&mut link.name, name));
                    out.push(c);
                }
                let before = link.flags;
                link.flags = flags;
                out.extend(flag_changes(before, link));
                out
            }
        }
    }

    /// Differences between this table and a fresh dump, as the changes that must have happened
    /// in between; then adopts the dump. Used after `ENOBUFS` and by the reconcile backstop.
    pub fn diff_and_replace(&mut self, fresh: Vec<Link>) -> Vec<Change> {
        let fresh: BTreeMap<IfIndex, Link> = fresh.into_iter().map(|l| (l.ifindex, l)).collect();
        let fresh_names: HashMap<&str, IfIndex> = fresh.values().map(|l| (l.name.as_str(), l.ifindex)).collect();
        let mut out = Vec::new();
        let mut recreated_new = BTreeSet::new();
        let old_links: Vec<Link> = self.links.values().cloned().collect();
        for old in &old_links {
            match fresh.get(&old.ifindex) {
                Some(new) => {
                    if new.name != old.name {
                        let mut c = Change::new(ChangeKind::Renamed, new.ifindex, &new.name);
                        c.old_name = Some(old.name.clone());
                        out.push(c);
                    }
                    out.extend(flag_changes(old.flags, new));
                    out.extend(addr_changes(&old.addrs, new));
                }
                None => match fresh_names.get(old.name.as_str()) {
                    Some(&new_index) if !self.links.contains_key(&new_index) => {
                        out.push(Change::new(ChangeKind::Deleted, old.ifindex, &old.name));
                        let mut c = Change::new(ChangeKind::Recreated, new_index, &old.name);
                        c.old_ifindex = Some(old.ifindex);
                        out.push(c);
                        recreated_new.insert(new_index);
                        if let Some(new) = fresh.get(&new_index) {
                            out.extend(flag_changes(0, new));
                            out.extend(addr_changes(&BTreeSet::new(), new));
                        }
                    }
                    _ => {
                        out.push(Change::new(ChangeKind::Deleted, old.ifindex, &old.name));
                        self.remember_deleted(&old.name, old.ifindex);
                    }
                },
            }
        }
        for new in fresh.values() {
            if self.links.contains_key(&new.ifindex) || recreated_new.contains(&new.ifindex) {
                continue;
            }
            let mut c = Change::new(ChangeKind::Created, new.ifindex, &new.name);
            if let Some(old) = self.forget_deleted(&new.name) {
                c.kind = ChangeKind::Recreated;
                c.old_ifindex = Some(old);
            }
            out.push(c);
            out.extend(flag_changes(0, new));
            out.extend(addr_changes(&BTreeSet::new(), new));
        }
        self.links = fresh;
        out
    }
}

fn flag_changes(before: u32, link: &Link) -> Vec<Change> {
    let mut out = Vec::new();
    let toggled = before ^ link.flags;
    if toggled & IFF_UP != 0 {
        let kind = if link.is_up() { ChangeKind::Up } else { ChangeKind::Down };
        out.push(Change::new(kind, link.ifindex, &link.name));
    }
    if toggled & IFF_LOWER_UP != 0 {
        let kind = if link.has_carrier() { ChangeKind::CarrierUp } else { ChangeKind::CarrierDown };
        out.push(Change::new(kind, link.ifindex, &link.name));
    }
    out
}

fn addr_changes(before: &BTreeSet<IpAddr>, link: &Link) -> Vec<Change> {
    let mut out = Vec::new();
    for a in link.addrs.difference(before) {
        let mut c = Change::new(ChangeKind::AddressAdded, link.ifindex, &link.name);
        c.address = Some(*a);
        out.push(c);
    }
    for a in before.difference(&link.addrs) {
        let mut c = Change::new(ChangeKind::AddressRemoved, link.ifindex, &link.name);
        c.address = Some(*a);
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(i: u32, name: &str, flags: u32) -> Link {
        Link { ifindex: IfIndex(i), name: name.into(), flags, addrs: BTreeSet::new() }
    }
    fn kinds(c: &[Change]) -> Vec<ChangeKind> {
        c.iter().map(|c| c.kind).collect()
    }
    fn new_link(i: u32, name: &str, flags: u32) -> Update {
        Update::NewLink { ifindex: IfIndex(i), name: name.into(), flags, peer: None }
    }

    #[test]
    fn live_sequence_is_classified() {
        let mut t = LinkTable::from_links([link(5, "v0", IFF_UP | IFF_LOWER_UP)]);
        assert_eq!(kinds(&t.apply(new_link(5, "v0", IFF_UP | IFF_LOWER_UP))), vec![]);
        assert_eq!(kinds(&t.apply(new_link(5, "v0", 0))), vec![ChangeKind::Down, ChangeKind::CarrierDown]);
        assert_eq!(kinds(&t.apply(new_link(5, "v0", IFF_UP))), vec![ChangeKind::Up]);
        let renamed = t.apply(new_link(5, "v1", IFF_UP));
        assert_eq!(kinds(&renamed), vec![ChangeKind::Renamed]);
        assert_eq!(renamed[0].old_name.as_deref(), Some("v0"));
        let del = Update::DelLink { ifindex: IfIndex(5), name: "v1".into(), moved: false };
        assert_eq!(kinds(&t.apply(del)), vec![ChangeKind::Deleted]);
        let again = t.apply(new_link(9, "v1", 0));
        assert_eq!(kinds(&again), vec![ChangeKind::Recreated]);
        assert_eq!(again[0].old_ifindex, Some(IfIndex(5)));
        let moved = Update::DelLink { ifindex: IfIndex(9), name: "v1".into(), moved: true };
        assert_eq!(kinds(&t.apply(moved)), vec![ChangeKind::MovedOut]);
        assert_eq!(kinds(&t.apply(new_link(10, "fresh", 0))), vec![ChangeKind::Created]);
    }

    #[test]
    fn addresses_are_tracked_once() {
        let mut t = LinkTable::from_links([link(5, "v0", 0)]);
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        assert_eq!(kinds(&t.apply(Update::NewAddr { ifindex: IfIndex(5), addr: a })), vec![ChangeKind::AddressAdded]);
        assert!(t.apply(Update::NewAddr { ifindex: IfIndex(5), addr: a }).is_empty());
        assert_eq!(kinds(&t.apply(Update::DelAddr { ifindex: IfIndex(5), addr: a })), vec![ChangeKind::AddressRemoved]);
    }

    #[test]
    fn resync_diff_finds_missed_changes() {
        let mut t = LinkTable::from_links([link(1, "lo", IFF_UP), link(5, "a", IFF_UP), link(6, "b", 0), link(7, "c", 0)]);
        let mut fresh_c = link(12, "c", 0);
        fresh_c.addrs.insert("10.0.0.1".parse().unwrap());
        let fresh = vec![link(1, "lo", IFF_UP), link(5, "a2", 0), fresh_c, link(11, "new", 0)];
        let changes = t.diff_and_replace(fresh);
        let got: Vec<(ChangeKind, u32)> = changes.iter().map(|c| (c.kind, c.ifindex.0)).collect();
        assert_eq!(
            got,
            vec![
                (ChangeKind::Renamed, 5),
                (ChangeKind::Down, 5),
                (ChangeKind::Deleted, 6),
                (ChangeKind::Deleted, 7),
                (ChangeKind::Recreated, 12),
                (ChangeKind::AddressAdded, 12),
                (ChangeKind::Created, 11),
            ]
        );
        assert!(t.diff_and_replace(t.links().cloned().collect()).is_empty(), "no change, no event");
        assert_eq!(t.deleted_ifindex("b"), Some(IfIndex(6)));
    }
}

#[cfg(test)]
mod name_tests {
    use super::ChangeKind;

    #[test]
    fn table_names_match_json_names() {
        for k in [ChangeKind::CarrierDown, ChangeKind::MovedIn, ChangeKind::AddressRemoved, ChangeKind::Up] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }
}
