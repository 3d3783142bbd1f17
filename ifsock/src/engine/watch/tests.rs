//! The watch correlator fed fake inputs: no root, no kernel.
use std::{collections::BTreeSet, net::IpAddr};

use super::*;
use crate::{
    model::{
        event::{RequestOp, LinkRequest},
        link::{IFF_LOWER_UP, IFF_UP},
        ids::SockInode,
        sock_error::{CurrentTask, InodeSource, SockErrorProbe},
        socket::Binding,
    },
    model::receiver::{Certainty, HungReceiver, IfaceState, IfaceTie},
};

const NS: NetnsIno = NetnsIno(7);
const NS2: NetnsIno = NetnsIno(8);
/// Requests in these tests are made at 1 s (CLOCK_MONOTONIC ns).
const T0_NS: u64 = 1_000_000_000;

/// A clock `ms` milliseconds after a fixed start (requests are made at `T0_NS`).
struct Clock(Instant);
impl Clock {
    fn at(&self, ms: u64) -> Now {
        Now { at: self.0 + Duration::from_millis(ms), mono_ns: T0_NS + ms * 1_000_000, unix_ns: 1_700_000_000_000_000_000 + ms * 1_000_000 }
    }
}

/// Fixed sockets per netns; counts the full and the filtered snapshots asked for.
#[derive(Default)]
struct Fake {
    sockets: HashMap<NetnsIno, Vec<Socket>>,
    asked: usize,
    asked_tied: usize,
}
impl SocketSource for Fake {
    fn sockets(&mut self, netns: NetnsIno) -> Result<Vec<Socket>> {
        self.asked += 1;
        Ok(self.sockets.get(&netns).cloned().unwrap_or_default())
    }

    /// What the kernel filter admits: bound to one of `ifindexes`, or unbound on the wildcard
    /// or one of `addrs`.
    fn sockets_tied(&mut self, netns: NetnsIno, ifindexes: &[IfIndex], addrs: &[IpAddr]) -> Result<Vec<Socket>> {
        self.asked_tied += 1;
        let all = self.sockets.get(&netns).cloned().unwrap_or_default();
        Ok(all
            .into_iter()
            .filter(|s| match s.bound_dev_if {
                0 => s.local_addr.is_unspecified() || addrs.contains(&s.local_addr),
                dev => ifindexes.contains(&IfIndex(dev)),
            })
            .collect())
    }
}

fn config() -> Config {
    Config { iface: None, sockets: true, recv_tracking: true, stranded_after: Duration::from_secs(1), sockets_after: false }
}

fn link(i: u32, name: &str, flags: u32, addrs: &[&str]) -> Link {
    Link { ifindex: IfIndex(i), name: name.into(), flags, addrs: addrs.iter().map(|a| a.parse().unwrap()).collect::<BTreeSet<IpAddr>>() }
}

fn dump(links: Vec<Link>, pairs: &[(u32, u32)]) -> Dump {
    let mut peers = BTreeMap::new();
    for (a, b) in pairs {
        peers.insert(IfIndex(*a), IfIndex(*b));
        peers.insert(IfIndex(*b), IfIndex(*a));
    }
    Dump { links, peers, addrs: Default::default() }
}

fn newlink(i: u32, name: &str, flags: u32, peer: Option<u32>) -> Update {
    Update::NewLink { ifindex: IfIndex(i), name: name.into(), flags, peer: peer.map(IfIndex) }
}

fn dellink(i: u32, name: &str) -> Update {
    Update::DelLink { ifindex: IfIndex(i), name: name.into(), moved: false }
}

fn request(op: RequestOp, ifindex: Option<u32>, name: Option<&str>, peer_name: Option<&str>) -> KernelInput {
    KernelInput::LinkRequest(LinkRequest {
        ts_ns: T0_NS,
        pid: 77,
        tid: 77,
        comm: "ip".into(),
        netns: NS,
        op,
        ifindex: ifindex.map(IfIndex),
        name: name.map(String::from),
        peer_name: peer_name.map(String::from),
        evidence: "tracepoint:syscalls:sys_enter_sendmsg",
    })
}

fn udp(ino: u64, netns: NetnsIno, local: [u8; 4], port: u16, bound_dev_if: u32, pktinfo: bool) -> Socket {
    let mut laddr = [0u8; 16];
    laddr[..4].copy_from_slice(&local);
    Socket::from_record(&ifsock_common::SockRecord {
        sk: ino, cookie: 0, ino, netns: netns.0, uid: 0, bound_dev_if, family: 2, protocol: 17, state: 7, lport: port, rport: 0,
        flags: if pktinfo { ifsock_common::sock_flags::PKTINFO } else { 0 }, laddr, raddr: [0; 16], rx_queue: 0, drops: 0,
    })
}

fn changes(records: &[WatchRecord]) -> Vec<&ChangeEvent> {
    records.iter().filter_map(|r| if let WatchRecord::Change(c) = r { Some(c) } else { None }).collect()
}

fn kinds(records: &[WatchRecord]) -> Vec<(ChangeKind, u32, Source)> {
    changes(records).iter().map(|c| (c.change.kind, c.change.ifindex.0, c.source)).collect()
}

fn engine_with(links: Vec<Link>, pairs: &[(u32, u32)], fake: &mut Fake, clock: &Clock) -> WatchEngine {
    let mut e = WatchEngine::new(config());
    assert!(e.add_netns(NS, Some("demo".into()), dump(links, pairs), false, &clock.at(0), fake).is_empty(), "the start-up dump is state, not changes");
    e
}

#[test]
fn live_updates_are_netlink_and_dump_differences_are_resync_or_reconcile() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(1, "lo", IFF_UP, &[]), link(5, "v0", IFF_UP | IFF_LOWER_UP, &[])], &[], &mut fake, &clock);
    let live = e.on_updates(NS, vec![newlink(5, "v0", IFF_LOWER_UP, None), newlink(5, "v0", IFF_LOWER_UP, None)], &clock.at(1), &mut fake);
    assert_eq!(kinds(&live), vec![(ChangeKind::Down, 5, Source::Netlink)], "a repeated state is no change");
    e.on_overrun(NS);
    let resync = e.on_dump(NS, dump(vec![link(1, "lo", IFF_UP, &[]), link(9, "v9", 0, &[])], &[]), Source::Resync, &clock.at(2), &mut fake);
    assert_eq!(kinds(&resync), vec![(ChangeKind::Deleted, 5, Source::Resync), (ChangeKind::Created, 9, Source::Resync)]);
    e.on_reconcile();
    let same = e.on_dump(NS, dump(vec![link(1, "lo", IFF_UP, &[]), link(9, "v9", 0, &[])], &[]), Source::Reconcile, &clock.at(3), &mut fake);
    assert!(same.is_empty(), "an unchanged dump reports nothing");
    let late = e.on_dump(NS, dump(vec![link(1, "lo", IFF_UP, &[]), link(9, "v9", IFF_UP, &["10.0.0.9"])], &[]), Source::Reconcile, &clock.at(4), &mut fake);
    assert_eq!(kinds(&late), vec![(ChangeKind::Up, 9, Source::Reconcile), (ChangeKind::AddressAdded, 9, Source::Reconcile)]);
    let c = e.counters();
    assert_eq!((c.netlink_messages, c.events, c.enobufs, c.resyncs, c.resync_changes, c.reconciles, c.reconcile_changes), (1, 5, 1, 1, 2, 1, 2));
}

#[test]
fn rename_and_recreate_keep_the_old_name_and_ifindex() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "wg0", IFF_UP, &[])], &[], &mut fake, &clock);
    let r = e.on_updates(NS, vec![newlink(5, "wg1", IFF_UP, None)], &clock.at(1), &mut fake);
    let renamed = changes(&r)[0];
    assert_eq!((renamed.change.kind, renamed.change.old_name.as_deref(), renamed.change.name.as_str()), (ChangeKind::Renamed, Some("wg0"), "wg1"));
    e.on_updates(NS, vec![dellink(5, "wg1")], &clock.at(2), &mut fake);
    let r = e.on_updates(NS, vec![newlink(6, "wg1", 0, None)], &clock.at(3), &mut fake);
    let again = changes(&r)[0];
    assert_eq!((again.change.kind, again.change.ifindex, again.change.old_ifindex), (ChangeKind::Recreated, IfIndex(6), Some(IfIndex(5))));
    // Filtering by name follows the interface by its previous name too.
    let mut f = WatchEngine::new(Config { iface: Some("wg0".into()), ..config() });
    f.add_netns(NS, None, dump(vec![link(5, "wg0", IFF_UP, &[]), link(8, "other", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    let r = f.on_updates(NS, vec![newlink(5, "wg1", IFF_UP, None), newlink(8, "other", 0, None)], &clock.at(1), &mut fake);
    assert_eq!(kinds(&r), vec![(ChangeKind::Renamed, 5, Source::Netlink)]);
    assert_eq!(f.counters().events, 1, "filtered-out changes are not counted as events");
}

#[test]
fn a_move_pairs_out_and_in_within_the_pairing_bound_only() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "mv", IFF_UP, &[])], &[], &mut fake, &clock);
    e.add_netns(NS2, Some("other".into()), dump(vec![], &[]), false, &clock.at(0), &mut fake);
    let out = e.on_updates(NS, vec![Update::DelLink { ifindex: IfIndex(5), name: "mv".into(), moved: true }], &clock.at(1), &mut fake);
    assert_eq!(kinds(&out), vec![(ChangeKind::MovedOut, 5, Source::Netlink)]);
    let arrived = e.on_updates(NS2, vec![newlink(3, "mv", 0, None)], &clock.at(100), &mut fake);
    let c = changes(&arrived)[0];
    assert_eq!((c.change.kind, c.from_netns, c.netns), (ChangeKind::MovedIn, Some(NS), NS2));
    // Past the bound, an arrival is a creation.
    e.on_updates(NS2, vec![Update::DelLink { ifindex: IfIndex(3), name: "mv".into(), moved: true }], &clock.at(200), &mut fake);
    let late = e.on_updates(NS, vec![newlink(11, "mv", 0, None)], &clock.at(200 + MOVE_PAIRING.as_millis() as u64 + 1), &mut fake);
    let c = changes(&late)[0];
    assert_eq!((c.change.kind, c.from_netns), (ChangeKind::Created, None), "unpaired past {MOVE_PAIRING:?}");
}

#[test]
fn a_move_never_pairs_within_one_netns() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "mv", IFF_UP, &[])], &[], &mut fake, &clock);
    e.on_updates(NS, vec![Update::DelLink { ifindex: IfIndex(5), name: "mv".into(), moved: true }], &clock.at(1), &mut fake);
    let back = e.on_updates(NS, vec![newlink(12, "mv", 0, None)], &clock.at(2), &mut fake);
    assert_eq!(changes(&back)[0].change.kind, ChangeKind::Created);
}

#[test]
fn removed_addresses_tie_address_bound_sockets_to_the_deletion_for_a_while() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let bound = udp(100, NS, [10, 1, 0, 1], 6102, 0, false);
    let by_dev = udp(101, NS, [0, 0, 0, 0], 6101, 5, false);
    let elsewhere = udp(102, NS, [10, 2, 0, 1], 6103, 0, false);
    fake.sockets.insert(NS, vec![bound, by_dev, elsewhere]);
    let mut e = engine_with(vec![link(5, "v0", IFF_UP, &["10.1.0.1"]), link(6, "v1", IFF_UP, &["10.1.0.2"])], &[], &mut fake, &clock);
    // Unregister order: RTM_DELADDR first, then RTM_DELLINK (separate datagrams).
    let r = e.on_updates(NS, vec![Update::DelAddr { ifindex: IfIndex(5), addr: "10.1.0.1".parse().unwrap() }], &clock.at(1), &mut fake);
    assert!(changes(&r)[0].sockets.is_empty(), "address changes carry no sockets");
    let r = e.on_updates(NS, vec![dellink(5, "v0")], &clock.at(2), &mut fake);
    let del = changes(&r)[0];
    let inodes: BTreeSet<u64> = del.sockets.iter().map(|s| s.socket.inode.0).collect();
    assert_eq!(inodes, BTreeSet::from([100, 101]), "{:?}", del.sockets);
    assert!(del.sockets.iter().any(|s| s.socket.inode.0 == 100 && s.binding == Some(Binding::Address)));
    // The memory is bounded in time: an address removed long before the deletion is forgotten.
    e.on_updates(NS, vec![Update::DelAddr { ifindex: IfIndex(6), addr: "10.1.0.2".parse().unwrap() }], &clock.at(3), &mut fake);
    fake.sockets.insert(NS, vec![udp(103, NS, [10, 1, 0, 2], 6104, 0, false)]);
    let r = e.on_updates(NS, vec![dellink(6, "v1")], &clock.at(3 + REMOVED_ADDR_MEMORY.as_millis() as u64 + 1), &mut fake);
    assert!(changes(&r)[0].sockets.is_empty(), "{:?}", changes(&r)[0].sockets);
}

#[test]
fn a_burst_takes_a_few_filtered_snapshots_then_one_full_one_and_none_without_sockets() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let names: Vec<String> = (1..=8).map(|i| format!("v{i}")).collect();
    let mut e = engine_with((1..=8).map(|i| link(i, &names[i as usize - 1], IFF_UP, &[])).collect(), &[], &mut fake, &clock);
    fake.asked = 0;
    // One datagram downing six links: FILTERED_PER_BURST filtered walks, then one full snapshot.
    e.on_updates(NS, (1..=6).map(|i| newlink(i, &names[i as usize - 1], 0, None)).collect(), &clock.at(1), &mut fake);
    assert_eq!((fake.asked_tied, fake.asked), (FILTERED_PER_BURST as usize, 1));
    // More was queued: the next datagram belongs to the same burst and reuses the full one.
    e.more_queued(true);
    e.on_updates(NS, vec![newlink(7, "v7", 0, None)], &clock.at(2), &mut fake);
    assert_eq!((fake.asked_tied, fake.asked), (FILTERED_PER_BURST as usize, 1));
    // The queue ran dry: a new burst starts with a fresh, filtered snapshot.
    e.more_queued(false);
    e.on_updates(NS, vec![newlink(8, "v8", 0, None)], &clock.at(3), &mut fake);
    assert_eq!((fake.asked_tied, fake.asked), (FILTERED_PER_BURST as usize + 1, 1));
    // Input that never pauses: after MAX_BURST the burst is cut and snapshots are fresh again.
    e.more_queued(true);
    e.on_updates(NS, vec![newlink(8, "v8", IFF_UP, None)], &clock.at(4), &mut fake);
    assert_eq!(fake.asked_tied, FILTERED_PER_BURST as usize + 1, "same burst: the walk is reused");
    e.more_queued(true);
    e.on_updates(NS, vec![newlink(8, "v8", 0, None)], &clock.at(3 + MAX_BURST.as_millis() as u64), &mut fake);
    assert_eq!(fake.asked_tied, FILTERED_PER_BURST as usize + 2, "a burst lasts at most MAX_BURST");
    let asked = (fake.asked_tied, fake.asked);
    let mut quiet = WatchEngine::new(Config { sockets: false, ..config() });
    quiet.add_netns(NS, None, dump(vec![link(1, "v1", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    quiet.on_updates(NS, vec![newlink(1, "v1", 0, None)], &clock.at(1), &mut fake);
    assert_eq!((fake.asked_tied, fake.asked), asked, "--no-sockets takes no snapshot");
}

#[test]
fn a_request_explains_the_change_that_follows_it_within_the_window() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "v0", IFF_UP, &[]), link(6, "v1", IFF_UP, &[])], &[], &mut fake, &clock);
    e.on_kernel(request(RequestOp::Set { flags: 0, change: IFF_UP, create: false }, Some(5), None, None));
    let r = e.on_updates(NS, vec![newlink(5, "v0", 0, None)], &clock.at(10), &mut fake);
    let cause = changes(&r)[0].cause.clone().unwrap();
    assert_eq!((cause.pid, cause.request, cause.evidence.as_str()), (77, "RTM_NEWLINK", "tracepoint:syscalls:sys_enter_sendmsg"));
    let r = e.on_updates(NS, vec![newlink(6, "v1", 0, None)], &clock.at(11), &mut fake);
    assert!(changes(&r)[0].cause.is_none(), "a request for another interface explains nothing");
    // The same request, seen again past the window, is stale.
    let r = e.on_updates(NS, vec![newlink(5, "v0", IFF_UP, None), newlink(5, "v0", 0, None)], &clock.at(CAUSE_WINDOW_NS / 1_000_000 + 1), &mut fake);
    assert!(changes(&r).iter().all(|c| c.cause.is_none()), "stale request");
}

#[test]
fn deleting_one_end_of_a_veth_gives_both_ends_the_request() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "va", IFF_UP | IFF_LOWER_UP, &[]), link(6, "vb", IFF_UP | IFF_LOWER_UP, &[]), link(7, "vc", IFF_UP, &[])], &[(5, 6)], &mut fake, &clock);
    e.on_kernel(request(RequestOp::Delete, Some(5), None, None));
    // The peer's notification may come first or last: both orders attribute it.
    let r = e.on_updates(NS, vec![dellink(6, "vb"), dellink(5, "va"), dellink(7, "vc")], &clock.at(5), &mut fake);
    let by: Vec<(u32, Option<String>)> = changes(&r).iter().map(|c| (c.change.ifindex.0, c.cause.as_ref().map(|c| c.evidence.clone()))).collect();
    assert_eq!(
        by,
        vec![(6, Some("peer of 5".into())), (5, Some("tracepoint:syscalls:sys_enter_sendmsg".into())), (7, None)],
        "an unrelated link deleted in the same batch gets no cause"
    );
    assert!(changes(&r).iter().filter(|c| c.cause.is_some()).all(|c| c.cause.as_ref().is_some_and(|c| c.pid == 77 && c.request == "RTM_DELLINK")));
}

#[test]
fn the_peer_learned_live_and_a_resync_attribute_too() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![], &[], &mut fake, &clock);
    // veth_newlink(): the peer's RTM_NEWLINK first (not linked yet), then the named end's with IFLA_LINK.
    e.on_kernel(request(RequestOp::Set { flags: 0, change: 0, create: true }, None, Some("va"), Some("vb")));
    let r = e.on_updates(NS, vec![newlink(6, "vb", 0, None), newlink(7, "va", 0, Some(6))], &clock.at(1), &mut fake);
    let created: Vec<(u32, Option<String>)> = changes(&r).iter().map(|c| (c.change.ifindex.0, c.cause.as_ref().map(|c| c.evidence.clone()))).collect();
    assert_eq!(created, vec![(6, Some("peer of va".into())), (7, Some("tracepoint:syscalls:sys_enter_sendmsg".into()))]);
    // Both deletions found by a resync after ENOBUFS: the pair known before the dump still ties them.
    e.on_kernel(request(RequestOp::Delete, Some(7), None, None));
    e.on_overrun(NS);
    let r = e.on_dump(NS, dump(vec![], &[]), Source::Resync, &clock.at(2), &mut fake);
    let deleted: Vec<(u32, Option<String>)> = changes(&r).iter().map(|c| (c.change.ifindex.0, c.cause.as_ref().map(|c| c.evidence.clone()))).collect();
    assert_eq!(deleted, vec![(6, Some("peer of 7".into())), (7, Some("tracepoint:syscalls:sys_enter_sendmsg".into()))]);
}

#[test]
fn kernel_device_evidence_marks_the_source_and_stands_in_for_a_cause() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "v0", IFF_UP, &[])], &[], &mut fake, &clock);
    e.on_kernel(KernelInput::Device(KernelEvidence { reason: "unregister", via: "fentry", pid: 0, tid: 0, comm: "kworker/0:1".into(), ts_ns: T0_NS, key: (NS, IfIndex(5)) }));
    let r = e.on_updates(NS, vec![dellink(5, "v0")], &clock.at(1), &mut fake);
    let c = changes(&r)[0];
    assert_eq!(c.source, Source::KernelNetlink);
    let cause = c.cause.clone().unwrap();
    assert_eq!((cause.request, cause.evidence.as_str(), cause.comm.as_str()), ("none (kernel context)", "fentry:device", "kworker/0:1"));
}

fn receiver(tid: u32, pktinfo: bool, ties: Vec<IfaceTie>) -> HungReceiver {
    HungReceiver {
        pid: tid, tid, netns: NS, comm: "server".into(), syscall: "recvmsg", fd: Some(3), fd_open: true, blocked_ns: Some(2_000_000_000),
        blocked_source: "syscall_entry", blocked_since_source: crate::model::receiver::BlockedSince::RecvProbe,
        source: crate::model::receiver::ReceiverSource::WaitQueue, probe: None, in_wait: None, certainty: Certainty::Exact, evidence: String::new(), orphaned: false,
        socket: Some(udp(200 + tid as u64, NS, [0, 0, 0, 0], 6000, 0, pktinfo)), candidates: vec![], interfaces: ties, stranded: true,
    }
}

fn tie(i: u32, binding: Binding, state: IfaceState) -> IfaceTie {
    IfaceTie { ifindex: IfIndex(i), name: None, binding, state }
}

fn stranded(records: &[WatchRecord]) -> Vec<(u32, &'static str, ChangeKind)> {
    records.iter().filter_map(|r| if let WatchRecord::ReceiverStranded(s) = r { Some((s.receiver.tid, s.phase, s.change.kind)) } else { None }).collect()
}

#[test]
fn a_wildcard_pktinfo_receiver_is_not_stranded_by_a_deleted_veth_nor_by_its_peers_down() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "va", IFF_UP, &[]), link(6, "vb", IFF_UP, &[])], &[(5, 6)], &mut fake, &clock);
    assert!(!e.wants_receiver_scan());
    e.on_updates(NS, vec![newlink(6, "vb", 0, Some(5)), dellink(5, "va")], &clock.at(1), &mut fake);
    assert!(e.wants_receiver_scan(), "a down and a delete wait for one receiver scan");
    let ctx = e.receiver_context();
    assert_eq!(ctx.deleted[&NS].iter().map(|l| l.ifindex.0).collect::<Vec<_>>(), vec![5], "the scan ties receivers to the deleted link");
    // The scan: the seed-003 receiver (wildcard + IP_PKTINFO) sees va deleted and vb down; a
    // plain wildcard receiver sees the same; only a device-bound receiver on vb is stranded (by
    // its down): a wildcard socket still receives on every other interface.
    let seed = receiver(10, true, vec![tie(5, Binding::Wildcard, IfaceState::Deleted), tie(6, Binding::Wildcard, IfaceState::Down)]);
    let plain = receiver(11, false, vec![tie(5, Binding::Wildcard, IfaceState::Deleted), tie(6, Binding::Wildcard, IfaceState::Down)]);
    let on_vb = receiver(12, false, vec![tie(6, Binding::Device, IfaceState::Down)]);
    let r = e.on_receivers(&[seed.clone(), plain.clone(), on_vb.clone()], &clock.at(2));
    assert_eq!(stranded(&r), vec![(12, "interface_change", ChangeKind::Down)]);
    // Still blocked: once, after the threshold; a receiver that woke (absent) is forgotten.
    assert!(e.on_receivers(&[seed.clone(), on_vb.clone()], &clock.at(500)).is_empty(), "before the threshold");
    let r = e.on_receivers(&[seed.clone(), on_vb.clone()], &clock.at(2 + 1000));
    assert_eq!(stranded(&r), vec![(12, "threshold", ChangeKind::Down)]);
    assert!(e.on_receivers(&[seed, on_vb], &clock.at(5000)).is_empty(), "the threshold is reported once");
    assert!(e.following_stranded());
    assert!(e.on_receivers(&[], &clock.at(6000)).is_empty());
    assert!(!e.wants_receiver_scan(), "woken receivers are no longer followed");
}

#[test]
fn a_receiver_of_another_netns_on_the_same_ifindex_is_not_stranded_by_this_netns_deletion() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(3, "va", IFF_UP, &[])], &[], &mut fake, &clock);
    e.on_updates(NS, vec![dellink(3, "va")], &clock.at(1), &mut fake);
    // ifindex 3 of another namespace, deleted there long ago: its receiver is not this change's.
    let mut elsewhere = receiver(20, false, vec![tie(3, Binding::Device, IfaceState::Deleted)]);
    elsewhere.netns = NetnsIno(NS.0 + 1);
    let here = receiver(21, false, vec![tie(3, Binding::Device, IfaceState::Deleted)]);
    let r = e.on_receivers(&[elsewhere.clone(), here.clone()], &clock.at(2));
    assert_eq!(stranded(&r), vec![(21, "interface_change", ChangeKind::Deleted)]);
    let r = e.on_receivers(&[elsewhere, here], &clock.at(2 + 1000));
    assert_eq!(stranded(&r), vec![(21, "threshold", ChangeKind::Deleted)]);
}

#[test]
fn a_change_that_arrives_during_a_receiver_scan_waits_for_the_next_scan() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(5, "va", IFF_UP, &[]), link(8, "vc", IFF_UP, &[])], &[], &mut fake, &clock);
    e.on_updates(NS, vec![dellink(5, "va")], &clock.at(1), &mut fake);
    let (ctx, scan) = e.begin_receiver_scan();
    assert_eq!(ctx.deleted[&NS].iter().map(|l| l.ifindex.0).collect::<Vec<_>>(), vec![5]);
    // While the scan runs on its thread, vc is deleted: the scan's links do not show it.
    e.on_updates(NS, vec![dellink(8, "vc")], &clock.at(2), &mut fake);
    let on_va = receiver(10, false, vec![tie(5, Binding::Device, IfaceState::Deleted)]);
    let on_vc = receiver(11, false, vec![tie(8, Binding::Device, IfaceState::Deleted)]);
    // Even if the scan did see a receiver tied to vc, it judges only the change pending when it began.
    let r = e.on_scanned_receivers(scan, &[on_va.clone(), on_vc.clone()], &clock.at(3));
    assert_eq!(stranded(&r), vec![(10, "interface_change", ChangeKind::Deleted)]);
    assert!(e.wants_receiver_scan(), "vc's delete still waits for its scan");
    let (ctx, scan) = e.begin_receiver_scan();
    assert!(ctx.deleted[&NS].iter().any(|l| l.ifindex.0 == 8), "the next scan ties receivers to vc");
    let r = e.on_scanned_receivers(scan, &[on_va, on_vc], &clock.at(4));
    assert_eq!(stranded(&r), vec![(11, "interface_change", ChangeKind::Deleted)]);
}

#[test]
fn without_receive_tracking_nothing_waits_for_a_scan() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = WatchEngine::new(Config { recv_tracking: false, ..config() });
    e.add_netns(NS, None, dump(vec![link(5, "va", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    e.on_updates(NS, vec![dellink(5, "va")], &clock.at(1), &mut fake);
    assert!(!e.wants_receiver_scan());
}

fn sock_error(netns: Option<NetnsIno>, port: u16) -> SockError {
    SockError {
        ts_ns: T0_NS, errno: 111, netns, inode: netns.map(|_| SockInode(300)), bound_dev_if: 0, family: 4, protocol: 17,
        local: format!("127.0.0.1:{port}").parse().unwrap(), remote: "127.0.0.1:9".parse().unwrap(),
        task: CurrentTask { pid: 0, tid: 0, comm: "swapper/0".into() }, via: if netns.is_some() { SockErrorProbe::TpBtf } else { SockErrorProbe::Tracepoint },
    }
}

#[test]
fn socket_errors_are_placed_once_and_ambiguous_ones_counted_unmatched() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(1, "lo", IFF_UP, &["127.0.0.1"])], &[], &mut fake, &clock);
    e.add_netns(NS2, None, dump(vec![link(1, "lo", IFF_UP, &["127.0.0.1"])], &[]), false, &clock.at(0), &mut fake);
    fake.sockets.insert(NS, vec![udp(400, NS, [127, 0, 0, 1], 5000, 0, false), udp(401, NS, [127, 0, 0, 1], 5001, 0, false)]);
    fake.sockets.insert(NS2, vec![udp(402, NS2, [127, 0, 0, 1], 5001, 0, false)]);
    for ev in [sock_error(Some(NS), 5000), sock_error(Some(NetnsIno(99)), 5000), sock_error(None, 5000), sock_error(None, 5001), sock_error(None, 5002)] {
        e.on_kernel(KernelInput::SockError(ev));
    }
    let r = e.flush_sock_errors(&clock.at(1), &mut fake);
    let placed: Vec<(NetnsIno, Option<u64>, Option<InodeSource>)> = r
        .iter()
        .filter_map(|r| if let WatchRecord::SocketError(s) = r { Some((s.netns, s.inode.map(|i| i.0), s.inode_source)) } else { None })
        .collect();
    assert_eq!(placed, vec![(NS, Some(300), Some(InodeSource::Sk)), (NS, Some(400), Some(InodeSource::Snapshot))], "other netns skipped; 5001 matches twice, 5002 never");
    assert_eq!((e.counters().socket_errors, e.counters().socket_errors_unmatched), (2, 2));
    assert_eq!(fake.asked, 2, "one snapshot per followed netns for the whole batch");
    assert!(e.flush_sock_errors(&clock.at(2), &mut fake).is_empty());
}

#[test]
fn a_removed_netns_reports_each_interface_deleted_then_itself_once() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(1, "lo", IFF_UP, &[]), link(5, "va", IFF_UP, &[]), link(6, "vb", IFF_UP, &[])], &[(5, 6)], &mut fake, &clock);
    let removal = Removal { still_exists: true, held_by_ifsock: true, other_holders: vec![] };
    let r = e.remove_netns(NS, removal.clone(), &clock.at(1));
    assert_eq!(kinds(&r), vec![(ChangeKind::Deleted, 1, Source::NetnsRemoved), (ChangeKind::Deleted, 5, Source::NetnsRemoved), (ChangeKind::Deleted, 6, Source::NetnsRemoved)]);
    assert!(changes(&r).iter().all(|c| c.sockets.is_empty() && c.cause.is_none() && c.netns_name.as_deref() == Some("demo")));
    let WatchRecord::NetnsRemoved(n) = r.last().unwrap() else { panic!("netns_removed last: {r:?}") };
    assert_eq!((n.netns, n.netns_name.as_deref(), n.links, n.held_by_ifsock), (NS, Some("demo"), 3, true));
    assert_eq!(fake.asked, 0, "a namespace going away is not snapshotted");
    assert!(!e.wants_receiver_scan(), "interfaces of a destroyed netns strand nobody we could see");
    assert!(e.remove_netns(NS, removal, &clock.at(2)).is_empty(), "reported once");
    assert!(!e.follows(NS));
}

#[test]
fn a_namespace_found_while_watching_is_announced_with_its_links() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = WatchEngine::new(config());
    let r = e.add_netns(NS2, Some("new".into()), dump(vec![link(1, "lo", 0, &[]), link(4, "v4", IFF_UP, &[])], &[]), true, &clock.at(0), &mut fake);
    assert!(matches!(&r[0], WatchRecord::NetnsAdded(n) if n.netns == NS2 && n.netns_name.as_deref() == Some("new")));
    assert_eq!(kinds(&r), vec![(ChangeKind::Created, 1, Source::Discovery), (ChangeKind::Created, 4, Source::Discovery), (ChangeKind::Up, 4, Source::Discovery)]);
}

#[test]
fn finish_reports_tables_and_counters_without_inventing_bpf_zeros() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = engine_with(vec![link(1, "lo", IFF_UP, &[])], &[], &mut fake, &clock);
    let r = e.finish(None);
    assert!(matches!(&r[0], WatchRecord::State(s) if s.netns == NS && s.links.len() == 1 && s.links[0].name == "lo"));
    let WatchRecord::Counters(c) = &r[1] else { panic!("{r:?}") };
    let v = serde_json::to_value(&r[1]).unwrap();
    assert!(c.counters.bpf.is_none() && v["counters"].get("ringbuf_drops").is_none(), "unreadable eBPF counters are absent, not 0: {v}");
}

/// Waiters per socket inode, fixed.
#[derive(Default)]
struct FakeWaiters(HashMap<u64, Vec<Waiter>>);
impl WaiterLookup for FakeWaiters {
    fn waiters_of(&self, s: &Socket) -> Vec<Waiter> {
        self.0.get(&s.inode.0).cloned().unwrap_or_default()
    }
}

fn epoll_waiter(fd: u32) -> Waiter {
    Waiter { pid: 812, tid: 812, comm: "unbound".into(), syscall: "epoll_wait", via: crate::model::stranded::Via::Epoll, fd: Some(fd), epfd: Some(9), fds: None, reason: None, source: crate::model::stranded::WaiterSource::Proc }
}

/// Runs the health steps the view runs after a batch; returns (judged count, records).
fn judge(e: &mut WatchEngine, fake: &mut Fake, waiters: &FakeWaiters, now: &Now) -> (usize, Vec<WatchRecord>) {
    let mut n = 0;
    for ino in e.health_due() {
        n += e.on_health(ino, None, now, fake);
    }
    let records = if e.wants_waiters() { e.flush_health(waiters, now) } else { Vec::new() };
    (n, records)
}

/// (type, inode, reason, cause) of each health record.
fn health(records: &[WatchRecord]) -> Vec<(&'static str, u64, &'static str, Option<String>)> {
    records
        .iter()
        .filter_map(|r| match r {
            WatchRecord::SocketStranded(e) => Some(("stranded", e.socket.tied.socket.inode.0, e.reason.name(), e.cause.clone())),
            WatchRecord::SocketRecovered(e) => Some(("recovered", e.socket.tied.socket.inode.0, e.reason.name(), e.cause.clone())),
            _ => None,
        })
        .collect()
}

fn deladdr(i: u32, a: &str) -> Update {
    Update::DelAddr { ifindex: IfIndex(i), addr: a.parse().unwrap() }
}
fn newaddr(i: u32, a: &str) -> Update {
    Update::NewAddr { ifindex: IfIndex(i), addr: a.parse().unwrap() }
}

/// veth0 (5) holds 10.78.0.1 and is up; veth9 (9) holds 10.79.0.1 and is up.
fn health_world(fake: &mut Fake, clock: &Clock) -> WatchEngine {
    fake.sockets.insert(
        NS,
        vec![
            udp(101, NS, [10, 78, 0, 1], 53, 0, false),  // address-bound on veth0
            udp(102, NS, [0, 0, 0, 0], 5353, 5, false),  // SO_BINDTODEVICE veth0
            udp(103, NS, [0, 0, 0, 0], 67, 0, true),     // wildcard IP_PKTINFO
            udp(104, NS, [10, 79, 0, 1], 53, 0, false),  // healthy, on veth9
            udp(105, NS, [0, 0, 0, 0], 123, 0, false),   // plain wildcard
        ],
    );
    engine_with(vec![link(5, "veth0", IFF_UP | IFF_LOWER_UP, &["10.78.0.1"]), link(9, "veth9", IFF_UP | IFF_LOWER_UP, &["10.79.0.1"])], &[], fake, clock)
}

#[test]
fn address_removal_strands_the_address_bound_socket_once_with_its_cause_and_waiters() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    let waiters = FakeWaiters([(101, vec![epoll_waiter(3)])].into());
    let out = e.on_updates(NS, vec![deladdr(5, "10.78.0.1")], &clock.at(1), &mut fake);
    assert_eq!(kinds(&out).len(), 1);
    let (n, records) = judge(&mut e, &mut fake, &waiters, &clock.at(1));
    assert_eq!(n, 1);
    assert_eq!(health(&records), vec![("stranded", 101, "address_gone", Some("address_removed".into()))]);
    let WatchRecord::SocketStranded(ev) = &records[0] else { unreachable!() };
    assert_eq!((ev.ifindex, ev.ifname.as_deref()), (Some(IfIndex(5)), Some("veth0")), "the interface that last held it");
    let v = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(v["type"], "socket_stranded");
    assert_eq!(v["address"], "10.78.0.1");
    assert_eq!(v["netns_name"], "demo");
    assert_eq!(v["socket"]["stranded"]["reason"], "address_gone");
    assert_eq!(v["waiters"][0]["via"], "epoll");
    // The next, unrelated change does not report it again.
    e.on_updates(NS, vec![newlink(9, "veth9", IFF_UP, None)], &clock.at(2), &mut fake);
    let (_, again) = judge(&mut e, &mut fake, &waiters, &clock.at(2));
    assert!(health(&again).is_empty(), "once per socket per change: {:?}", health(&again));
    // The address comes back: recovered, with what it was stranded by.
    e.on_updates(NS, vec![newaddr(5, "10.78.0.1")], &clock.at(3), &mut fake);
    let (_, back) = judge(&mut e, &mut fake, &waiters, &clock.at(3));
    assert_eq!(health(&back), vec![("recovered", 101, "address_gone", Some("address_added".into()))]);
    let WatchRecord::SocketRecovered(ev) = &back[0] else { unreachable!() };
    assert_eq!((ev.ifindex, ev.ifname.as_deref()), (Some(IfIndex(5)), Some("veth0")), "where the address came back");
    let v = serde_json::to_value(&back[0]).unwrap();
    assert_eq!((v["type"].as_str(), v["socket"]["stranded"].is_null()), (Some("socket_recovered"), true));
}

#[test]
fn device_down_strands_the_bound_socket_and_up_recovers_it() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    let w = FakeWaiters::default();
    e.on_updates(NS, vec![newlink(5, "veth0", 0, None)], &clock.at(1), &mut fake);
    let (_, down) = judge(&mut e, &mut fake, &w, &clock.at(1));
    assert_eq!(health(&down), vec![("stranded", 102, "device_down", Some("down".into()))], "address-bound 101 keeps its address while down");
    e.on_updates(NS, vec![newlink(5, "veth0", IFF_UP | IFF_LOWER_UP, None)], &clock.at(2), &mut fake);
    let (_, up) = judge(&mut e, &mut fake, &w, &clock.at(2));
    assert_eq!(health(&up), vec![("recovered", 102, "device_down", Some("up".into()))]);
}

#[test]
fn deletion_strands_bound_and_address_sockets_and_never_a_wildcard() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    let w = FakeWaiters::default();
    // A down of veth9 strands nothing bound to it and never the pktinfo wildcard.
    e.on_updates(NS, vec![newlink(9, "veth9", 0, None)], &clock.at(1), &mut fake);
    assert!(health(&judge(&mut e, &mut fake, &w, &clock.at(1)).1).is_empty());
    e.on_updates(NS, vec![newlink(9, "veth9", IFF_UP, None)], &clock.at(2), &mut fake);
    assert!(health(&judge(&mut e, &mut fake, &w, &clock.at(2)).1).is_empty());
    // One datagram: the kernel's RTM_DELADDR, then RTM_DELLINK.
    (fake.asked, fake.asked_tied) = (0, 0);
    let out = e.on_updates(NS, vec![deladdr(5, "10.78.0.1"), dellink(5, "veth0")], &clock.at(3), &mut fake);
    assert_eq!(kinds(&out).iter().map(|k| k.0).collect::<Vec<_>>(), vec![ChangeKind::AddressRemoved, ChangeKind::Deleted]);
    let (n, records) = judge(&mut e, &mut fake, &w, &clock.at(3));
    let mut got = health(&records);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("stranded", 101, "address_gone", Some("deleted".into())),
            ("stranded", 102, "device_deleted", Some("deleted".into())),
        ],
        "104 (live veth9), 103 (pktinfo wildcard) and 105 (plain wildcard) are healthy; the deletion, not its RTM_DELADDR, is named the cause"
    );
    assert_eq!(n, 2);
    let WatchRecord::SocketStranded(ev) = records.iter().find(|r| matches!(r, WatchRecord::SocketStranded(e) if e.socket.tied.socket.inode.0 == 102)).unwrap() else { unreachable!() };
    assert_eq!(ev.ifname.as_deref(), Some("veth0"), "the deleted device is named from the change");
    assert_eq!((fake.asked_tied, fake.asked), (1, 0), "one walk of the deleted interface's sockets serves the change and the health judgement");
}

#[test]
fn a_veth_pair_deleted_in_one_burst_costs_one_walk_that_covers_both_ends() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let on_a = udp(201, NS, [0, 0, 0, 0], 53, 5, false);
    let on_b = udp(202, NS, [10, 6, 0, 1], 53, 0, false);
    let elsewhere = udp(203, NS, [0, 0, 0, 0], 54, 7, false);
    fake.sockets.insert(NS, vec![on_a, on_b, elsewhere]);
    let mut e = engine_with(vec![link(5, "a", IFF_UP, &[]), link(6, "b", IFF_UP, &["10.6.0.1"]), link(7, "c", IFF_UP, &[])], &[(5, 6)], &mut fake, &clock);
    let w = FakeWaiters::default();
    fake.asked_tied = 0;
    let first = e.on_updates(NS, vec![dellink(5, "a")], &clock.at(1), &mut fake);
    assert_eq!(changes(&first)[0].sockets.iter().map(|s| s.socket.inode.0).collect::<Vec<_>>(), vec![201]);
    e.more_queued(true);
    let second = e.on_updates(NS, vec![dellink(6, "b")], &clock.at(2), &mut fake);
    assert_eq!(changes(&second)[0].sockets.iter().map(|s| s.socket.inode.0).collect::<Vec<_>>(), vec![202], "the peer's sockets come from the first walk");
    e.more_queued(false);
    let (n, _) = judge(&mut e, &mut fake, &w, &clock.at(2));
    assert_eq!(n, 2, "both ends' sockets are stranded");
    assert_eq!((fake.asked_tied, fake.asked), (1, 0), "one filtered walk for both deletions and the health judgement");
    // The next burst walks again: the sockets may have changed in between.
    e.on_updates(NS, vec![newlink(7, "c", 0, None)], &clock.at(3), &mut fake);
    assert_eq!(fake.asked_tied, 2);
}

#[test]
fn with_sockets_after_the_change_comes_first_and_its_sockets_in_a_record_of_their_own() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    fake.sockets.insert(NS, vec![udp(301, NS, [0, 0, 0, 0], 53, 5, false), udp(302, NS, [0, 0, 0, 0], 54, 6, false)]);
    let mut e = WatchEngine::new(Config { sockets_after: true, ..config() });
    e.add_netns(NS, Some("demo".into()), dump(vec![link(5, "a", IFF_UP, &[]), link(6, "b", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    (fake.asked, fake.asked_tied) = (0, 0);
    let out = e.on_updates(NS, vec![dellink(5, "a")], &clock.at(1), &mut fake);
    let change = changes(&out)[0];
    assert!(change.sockets_follow && change.sockets.is_empty());
    assert_eq!((fake.asked, fake.asked_tied), (0, 0), "no walk before the change is handed back");
    let v = serde_json::to_value(WatchRecord::Change(change.clone())).unwrap();
    assert_eq!(v["sockets_follow"], true);
    let follow = e.flush_change_sockets(&clock.at(2), &mut fake);
    let [WatchRecord::ChangeSockets(cs)] = &follow[..] else { panic!("{follow:?}") };
    assert_eq!((cs.event, cs.ifindex, cs.change_ts_unix_ns), ("deleted", IfIndex(5), change.ts_unix_ns));
    assert_eq!(cs.sockets.iter().map(|s| s.socket.inode.0).collect::<Vec<_>>(), vec![301]);
    assert!(e.flush_change_sockets(&clock.at(3), &mut fake).is_empty(), "each change's sockets once");
    // Without the option the field is left out of the JSON.
    let mut plain = WatchEngine::new(config());
    plain.add_netns(NS, None, dump(vec![link(6, "b", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    let out = plain.on_updates(NS, vec![dellink(6, "b")], &clock.at(1), &mut fake);
    let v = serde_json::to_value(WatchRecord::Change(changes(&out)[0].clone())).unwrap();
    assert!(v.get("sockets_follow").is_none() && v["sockets"].as_array().unwrap().len() == 1, "{v}");
}

#[test]
fn a_new_interface_costs_no_health_walk_unless_its_name_was_deleted_before() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    let w = FakeWaiters::default();
    e.on_updates(NS, vec![newlink(20, "fresh0", 0, None)], &clock.at(1), &mut fake);
    assert!(e.health_due().is_empty(), "nothing can be tied to an ifindex that did not exist");
    // veth0 deleted, then a new interface of that name: the device-bound socket stays stranded
    // (it names ifindex 5) and now says where the name went; the wildcards never were.
    e.on_updates(NS, vec![dellink(5, "veth0")], &clock.at(2), &mut fake);
    let (_, gone) = judge(&mut e, &mut fake, &w, &clock.at(2));
    assert!(health(&gone).iter().any(|h| h.1 == 102 && h.0 == "stranded"));
    assert!(!health(&gone).iter().any(|h| h.1 == 103), "{:?}", health(&gone));
    e.on_updates(NS, vec![newlink(21, "veth0", IFF_UP, None)], &clock.at(3), &mut fake);
    assert_eq!(e.health_due(), vec![NS]);
    let (_, back) = judge(&mut e, &mut fake, &w, &clock.at(3));
    assert!(!health(&back).iter().any(|h| h.1 == 102 && h.0 == "recovered"), "{:?}", health(&back));
}

#[test]
fn healthy_sockets_on_a_live_interface_cause_no_waiter_pass() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    e.on_updates(NS, vec![newaddr(9, "10.79.0.2"), newlink(9, "veth9", IFF_UP, None)], &clock.at(1), &mut fake);
    assert_eq!(e.health_due(), vec![NS]);
    assert_eq!(e.on_health(NS, None, &clock.at(1), &mut fake), 0);
    assert!(!e.wants_waiters(), "no health change, no /proc pass");
    assert!(e.health_due().is_empty());
}

#[test]
fn without_sockets_health_is_not_followed() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = WatchEngine::new(Config { sockets: false, ..config() });
    e.add_netns(NS, None, dump(vec![link(5, "veth0", IFF_UP, &["10.78.0.1"])], &[]), false, &clock.at(0), &mut fake);
    e.on_updates(NS, vec![dellink(5, "veth0")], &clock.at(1), &mut fake);
    assert!(e.health_due().is_empty(), "--no-sockets disables socket_stranded");
}

#[test]
fn with_iface_only_its_changes_strand_sockets() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    e.config.iface = Some("veth9".into());
    // One datagram: veth9 goes down (watched), then veth0 loses its address (not watched).
    e.on_updates(NS, vec![newlink(9, "veth9", 0, None), deladdr(5, "10.78.0.1")], &clock.at(1), &mut fake);
    let (n, records) = judge(&mut e, &mut fake, &FakeWaiters::default(), &clock.at(1));
    assert_eq!(n, 0, "104 on veth9 keeps its address while down; 101 was stranded by veth0's change: {:?}", health(&records));
    e.on_updates(NS, vec![deladdr(9, "10.79.0.1")], &clock.at(2), &mut fake);
    let (_, records) = judge(&mut e, &mut fake, &FakeWaiters::default(), &clock.at(2));
    assert_eq!(health(&records), vec![("stranded", 104, "address_gone", Some("address_removed".into()))]);
}

#[test]
fn after_a_recreate_the_socket_still_bound_to_the_old_ifindex_gets_a_verdict() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    let mut e = health_world(&mut fake, &clock);
    let w = FakeWaiters::default();
    e.on_updates(NS, vec![deladdr(5, "10.78.0.1"), dellink(5, "veth0")], &clock.at(1), &mut fake);
    let (_, gone) = judge(&mut e, &mut fake, &w, &clock.at(1));
    let mut got = health(&gone);
    got.sort();
    assert_eq!(got.iter().map(|h| (h.0, h.1)).collect::<Vec<_>>(), vec![("stranded", 101), ("stranded", 102)]);
    // The same name again, with its address, as a new ifindex.
    e.on_updates(NS, vec![newlink(21, "veth0", IFF_UP | IFF_LOWER_UP, None), newaddr(21, "10.78.0.1")], &clock.at(2), &mut fake);
    let (_, back) = judge(&mut e, &mut fake, &w, &clock.at(2));
    assert_eq!(health(&back).iter().map(|h| (h.0, h.1)).collect::<Vec<_>>(), vec![("recovered", 101)], "the address-bound socket recovers: {back:?}");
    let still: Vec<_> = back.iter().filter_map(|r| if let WatchRecord::SocketStillStranded(e) = r { Some(e) } else { None }).collect();
    assert_eq!(still.len(), 1, "{back:?}");
    let s = still[0];
    assert_eq!((s.socket.tied.socket.inode.0, s.reason.name(), s.ifindex, s.ifname.as_deref(), s.now_ifindex), (102, "device_deleted", Some(IfIndex(5)), Some("veth0"), Some(IfIndex(21))));
    assert_eq!(
        s.verdict.as_deref(),
        Some("socket inode 102 (no owner) is still bound to deleted ifindex 5 (veth0; veth0 is now ifindex 21): restart it, or `ifsock abort --inode 102`")
    );
    assert!(["recreated", "created"].contains(&s.cause.as_deref().unwrap_or("")), "{s:?}");
    let v = serde_json::to_value(WatchRecord::SocketStillStranded(s.clone())).unwrap();
    assert_eq!((v["type"].as_str(), v["now_ifindex"].as_u64()), (Some("socket_still_stranded"), Some(21)), "{v}");
    // Said once: the interface's next change (down, then up again) does not repeat it, and an
    // unrelated change says nothing about it.
    e.on_updates(NS, vec![newlink(21, "veth0", 0, None)], &clock.at(3), &mut fake);
    judge(&mut e, &mut fake, &w, &clock.at(3));
    e.on_updates(NS, vec![newlink(21, "veth0", IFF_UP | IFF_LOWER_UP, None)], &clock.at(3), &mut fake);
    let (_, up) = judge(&mut e, &mut fake, &w, &clock.at(3));
    assert!(!up.iter().any(|r| matches!(r, WatchRecord::SocketStillStranded(_))), "{up:?}");
    e.on_updates(NS, vec![newlink(9, "veth9", 0, None)], &clock.at(3), &mut fake);
    let (_, later) = judge(&mut e, &mut fake, &w, &clock.at(3));
    assert!(!later.iter().any(|r| matches!(r, WatchRecord::SocketStillStranded(_))), "{later:?}");
}

#[test]
fn one_socket_list_per_burst_for_the_changes_of_one_interface() {
    let (clock, mut fake) = (Clock(Instant::now()), Fake::default());
    fake.sockets.insert(NS, vec![udp(301, NS, [0, 0, 0, 0], 53, 5, false), udp(302, NS, [0, 0, 0, 0], 54, 6, false)]);
    let mut e = WatchEngine::new(Config { sockets_after: true, ..config() });
    e.add_netns(NS, None, dump(vec![link(5, "a", IFF_UP | IFF_LOWER_UP, &[]), link(6, "b", IFF_UP, &[])], &[]), false, &clock.at(0), &mut fake);
    let out = e.on_updates(NS, vec![newlink(5, "a", 0, None), dellink(5, "a"), newlink(6, "b", 0, None)], &clock.at(1), &mut fake);
    assert!(changes(&out).len() >= 3, "{out:?}");
    let follow = e.flush_change_sockets(&clock.at(2), &mut fake);
    let lists: Vec<_> = follow.iter().filter_map(|r| if let WatchRecord::ChangeSockets(c) = r { Some(c) } else { None }).collect();
    assert_eq!(lists.iter().map(|c| (c.ifindex.0, c.sockets.len())).collect::<Vec<_>>(), vec![(5, 1), (6, 1)], "{lists:?}");
    let also: Vec<_> = lists[0].also.iter().map(|a| a.event).collect();
    assert!(also.contains(&"deleted") && !also.contains(&"down"), "{also:?}");
    let v = serde_json::to_value(WatchRecord::ChangeSockets(lists[0].clone())).unwrap();
    assert!(v["also"].is_array() && serde_json::to_value(WatchRecord::ChangeSockets(lists[1].clone())).unwrap().get("also").is_none(), "{v}");
}
