//! The agent's metric values: typed inputs (per-netns socket snapshots, link changes, loss and
//! resync notices, probe choices) in, a [`Metrics`] value out. No I/O: `render::metrics` turns
//! the value into OpenMetrics text, and the agent publishes it to scrapers as a snapshot so a
//! scrape never waits for the event loop.
//!
//! Labels stay low-cardinality: netns, interface name, binding, protocol, reason. Never pid,
//! fd, inode or address.
use std::collections::BTreeMap;

use crate::model::{ids::NetnsIno, link::ChangeKind};

/// One socket of a netns snapshot, reduced to its metric labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRow {
    /// Interface it is tied to (`""` when none: wildcard or unbound).
    pub ifname: String,
    /// `device`, `address`, `wildcard` or `none` (`render::fmt::binding`).
    pub binding: &'static str,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Why it is stranded, if it is: `(ifname, reason)` with reason `address_gone`,
    /// `device_down` or `device_deleted`.
    pub stranded: Option<(String, &'static str)>,
}

/// Every socket and blocked receiver of one netns at one moment (after a change batch or at
/// reconcile).
#[derive(Clone, Debug, Default)]
pub struct NetnsSnapshot {
    /// Netns label: its name under /run/netns, a container name, or its inode number.
    pub netns: String,
    /// Its sockets.
    pub sockets: Vec<SocketRow>,
    /// Threads blocked receiving or accepting (on a socket's wait queue; the `/proc` pass where it
    /// cannot be walked), each with whether its socket is stranded.
    pub blocked_receivers: Vec<bool>,
}

/// Where events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LostSource {
    /// The eBPF ring buffer was full (`bpf_ringbuf_reserve` failed; the eBPF-side drop counter).
    Ringbuf,
    /// The rtnetlink subscription socket overflowed (`ENOBUFS` on `recv`).
    NetlinkEnobufs,
}

impl LostSource {
    /// The `source` label.
    pub fn label(self) -> &'static str {
        match self {
            LostSource::Ringbuf => "ringbuf",
            LostSource::NetlinkEnobufs => "netlink_enobufs",
        }
    }
}

/// What the aggregator is told.
#[derive(Clone, Debug)]
pub enum Input {
    /// The state of one netns now: replaces its gauges.
    Snapshot(NetnsIno, NetnsSnapshot),
    /// A netns is gone: its gauges go with it.
    NetnsGone(NetnsIno),
    /// One interface change was seen.
    LinkEvent(ChangeKind),
    /// `n` events were lost at `source` (rtnetlink: one per `ENOBUFS`).
    Lost(LostSource, u64),
    /// The running total of losses at `source` as the kernel side counts it (the eBPF drop
    /// counter); the counter never goes down.
    LostTotal(LostSource, u64),
    /// A re-dump after a loss.
    Resync,
    /// A periodic reconcile re-dump.
    Reconcile,
    /// A probe path and the program set serving it (`device` → `tracepoint`).
    ProbeSet {
        /// Probe path (`device`, `recv`, `iterators`, …).
        path: String,
        /// The set chosen (`fentry`, `kprobe`, `tracepoint`, `iter`, `none`).
        set: String,
    },
    /// The journal's running total of failed writes.
    JournalWriteErrors(u64),
}

/// Labels of `ifsock_sockets`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketKey {
    /// Netns label.
    pub netns: String,
    /// Interface name, `""` for none.
    pub ifname: String,
    /// Binding.
    pub binding: &'static str,
    /// Protocol.
    pub protocol: &'static str,
}

/// Labels of `ifsock_stranded_sockets`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StrandedKey {
    /// Netns label.
    pub netns: String,
    /// Interface involved.
    pub ifname: String,
    /// Reason.
    pub reason: &'static str,
}

/// Every metric value at one moment; `Clone` so the agent can hand scrapers a snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// `ifsock_sockets{netns,ifname,binding,protocol}`: sockets, count.
    pub sockets: BTreeMap<SocketKey, u64>,
    /// `ifsock_stranded_sockets{netns,ifname,reason}`: stranded sockets, count.
    pub stranded: BTreeMap<StrandedKey, u64>,
    /// `ifsock_blocked_receivers{netns,stranded}`: blocked receiving threads, count.
    pub blocked_receivers: BTreeMap<(String, bool), u64>,
    /// `ifsock_link_events_total{event}`.
    pub link_events: BTreeMap<&'static str, u64>,
    /// `ifsock_events_lost_total{source}`: both sources are always present.
    pub events_lost: BTreeMap<&'static str, u64>,
    /// `ifsock_resyncs_total`.
    pub resyncs: u64,
    /// `ifsock_reconciles_total`.
    pub reconciles: u64,
    /// `ifsock_probe_set_info{path,set}`.
    pub probe_sets: BTreeMap<String, String>,
    /// `ifsock_build_info{version}`.
    pub version: &'static str,
    /// `ifsock_journal_write_errors_total`.
    pub journal_write_errors: u64,
}

/// The aggregator: per-netns gauges plus run totals.
#[derive(Debug)]
pub struct MetricsEngine {
    per_netns: BTreeMap<NetnsIno, NetnsSnapshot>,
    totals: Metrics,
}

impl Default for MetricsEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsEngine {
    /// An aggregator with every counter at zero and the build version set.
    pub fn new() -> Self {
        let mut totals = Metrics { version: env!("CARGO_PKG_VERSION"), ..Metrics::default() };
        for s in [LostSource::Ringbuf, LostSource::NetlinkEnobufs] {
            totals.events_lost.insert(s.label(), 0);
        }
        MetricsEngine { per_netns: BTreeMap::new(), totals }
    }

    /// Applies one input.
    pub fn apply(&mut self, input: Input) {
        let t = &mut self.totals;
        match input {
            Input::Snapshot(ino, snap) => {
                self.per_netns.insert(ino, snap);
            }
            Input::NetnsGone(ino) => {
                self.per_netns.remove(&ino);
            }
            Input::LinkEvent(kind) => *t.link_events.entry(kind.name()).or_default() += 1,
            Input::Lost(source, n) => *t.events_lost.entry(source.label()).or_default() += n,
            Input::LostTotal(source, total) => {
                let v = t.events_lost.entry(source.label()).or_default();
                *v = (*v).max(total);
            }
            Input::Resync => t.resyncs += 1,
            Input::Reconcile => t.reconciles += 1,
            Input::ProbeSet { path, set } => {
                t.probe_sets.insert(path, set);
            }
            Input::JournalWriteErrors(total) => t.journal_write_errors = t.journal_write_errors.max(total),
        }
    }

    /// The metric values now: gauges summed from the latest snapshot of each netns.
    pub fn values(&self) -> Metrics {
        let mut m = self.totals.clone();
        for snap in self.per_netns.values() {
            for s in &snap.sockets {
                let key = SocketKey { netns: snap.netns.clone(), ifname: s.ifname.clone(), binding: s.binding, protocol: s.protocol };
                *m.sockets.entry(key).or_default() += 1;
                if let Some((ifname, reason)) = &s.stranded {
                    *m.stranded.entry(StrandedKey { netns: snap.netns.clone(), ifname: ifname.clone(), reason }).or_default() += 1;
                }
            }
            for &stranded in &snap.blocked_receivers {
                *m.blocked_receivers.entry((snap.netns.clone(), stranded)).or_default() += 1;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ifname: &str, binding: &'static str, stranded: Option<&'static str>) -> SocketRow {
        SocketRow { ifname: ifname.into(), binding, protocol: "udp", stranded: stranded.map(|r| (ifname.to_string(), r)) }
    }

    #[test]
    fn gauges_follow_the_latest_snapshot_per_netns() {
        let mut e = MetricsEngine::new();
        let snap = |sockets| NetnsSnapshot { netns: "a".into(), sockets, blocked_receivers: vec![true, false, false] };
        e.apply(Input::Snapshot(NetnsIno(1), snap(vec![row("veth0", "address", None), row("veth0", "address", None), row("", "wildcard", None)])));
        let m = e.values();
        let key = SocketKey { netns: "a".into(), ifname: "veth0".into(), binding: "address", protocol: "udp" };
        assert_eq!(m.sockets[&key], 2);
        assert!(m.stranded.is_empty());
        assert_eq!(m.blocked_receivers[&("a".to_string(), false)], 2);
        assert_eq!(m.blocked_receivers[&("a".to_string(), true)], 1);
        // The veth goes: the next snapshot replaces the old one, nothing is double-counted.
        e.apply(Input::Snapshot(NetnsIno(1), snap(vec![row("veth0", "none", Some("address_gone")), row("", "wildcard", None)])));
        let m = e.values();
        assert!(!m.sockets.contains_key(&key));
        assert_eq!(m.stranded[&StrandedKey { netns: "a".into(), ifname: "veth0".into(), reason: "address_gone" }], 1);
        e.apply(Input::NetnsGone(NetnsIno(1)));
        let m = e.values();
        assert!(m.sockets.is_empty() && m.stranded.is_empty() && m.blocked_receivers.is_empty());
    }

    #[test]
    fn netns_are_summed_separately() {
        let mut e = MetricsEngine::new();
        for (ino, name) in [(1, "a"), (2, "b")] {
            e.apply(Input::Snapshot(NetnsIno(ino), NetnsSnapshot { netns: name.into(), sockets: vec![row("eth0", "device", None)], blocked_receivers: vec![] }));
        }
        assert_eq!(e.values().sockets.len(), 2);
        assert!(e.values().sockets.values().all(|&v| v == 1));
    }

    #[test]
    fn counters_only_grow_and_count_real_losses() {
        let mut e = MetricsEngine::new();
        let m = e.values();
        assert_eq!(m.events_lost["ringbuf"], 0, "both sources are exposed from the start");
        assert_eq!(m.events_lost["netlink_enobufs"], 0);
        e.apply(Input::Lost(LostSource::NetlinkEnobufs, 1));
        e.apply(Input::Lost(LostSource::NetlinkEnobufs, 1));
        e.apply(Input::LostTotal(LostSource::Ringbuf, 5));
        e.apply(Input::LostTotal(LostSource::Ringbuf, 3));
        e.apply(Input::Resync);
        e.apply(Input::Reconcile);
        e.apply(Input::Reconcile);
        e.apply(Input::LinkEvent(ChangeKind::Deleted));
        e.apply(Input::LinkEvent(ChangeKind::Deleted));
        e.apply(Input::LinkEvent(ChangeKind::Down));
        e.apply(Input::JournalWriteErrors(4));
        e.apply(Input::JournalWriteErrors(2));
        let m = e.values();
        assert_eq!(m.events_lost["netlink_enobufs"], 2);
        assert_eq!(m.events_lost["ringbuf"], 5, "a running total never goes down");
        assert_eq!((m.resyncs, m.reconciles), (1, 2));
        assert_eq!(m.link_events["deleted"], 2);
        assert_eq!(m.link_events["down"], 1);
        assert_eq!(m.journal_write_errors, 4);
        assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn probe_sets_keep_the_latest_choice_per_path() {
        let mut e = MetricsEngine::new();
        e.apply(Input::ProbeSet { path: "iterators".into(), set: "iter".into() });
        e.apply(Input::ProbeSet { path: "recv".into(), set: "none".into() });
        e.apply(Input::ProbeSet { path: "recv".into(), set: "tracepoint".into() });
        let m = e.values();
        assert_eq!(m.probe_sets.len(), 2);
        assert_eq!(m.probe_sets["recv"], "tracepoint");
    }
}
