//! The teardown correlator fed fake inputs: no root, no kernel.
use super::*;
use crate::model::{receiver::ReceiverSource, socket::Owner};

const NS: NetnsIno = NetnsIno(7);
const PEER_NS: NetnsIno = NetnsIno(8);
const T0: u64 = 1_000_000_000;

fn sock(netns: NetnsIno, ino: u64, lport: u16, dev: u32, laddr: [u8; 4]) -> Socket {
    let mut l = [0u8; 16];
    l[..4].copy_from_slice(&laddr);
    let mut s = Socket::from_record(&ifsock_common::SockRecord {
        sk: ino, cookie: 0, ino, netns: netns.0, uid: 0, bound_dev_if: dev, family: 2, protocol: 17, state: 7, lport, rport: 0,
        flags: 0, laddr: l, raddr: [0; 16], rx_queue: 0, drops: 0,
    });
    s.owners = vec![Owner { pid: 7, comm: "app".into(), fd: 3 }];
    s
}

fn tied(s: Socket, binding: Binding) -> TiedSocket {
    TiedSocket { ifindex: Some(IfIndex(5)), ifname: Some("veth0".into()), binding: Some(binding), bound_dev_name: None, socket: s }
}

fn plan(dry_run: bool) -> Plan {
    let bound = sock(NS, 42, 5000, 5, [0, 0, 0, 0]);
    let wild = sock(NS, 44, 5002, 0, [0, 0, 0, 0]);
    let peer = sock(PEER_NS, 50, 6000, 9, [0, 0, 0, 0]);
    Plan {
        netns: NS,
        netns_name: Some("rz1".into()),
        ifindex: IfIndex(5),
        ifname: "veth0".into(),
        kind: Some("veth".into()),
        was_up: true,
        addrs: vec![],
        dry_run,
        grace_ms: 1000,
        sockets: vec![tied(bound.clone(), Binding::Device), tied(wild.clone(), Binding::Wildcard)],
        netns_sockets: vec![bound, wild],
        companions: vec![CompanionPlan {
            relation: Relation::VethPeer,
            netns: PEER_NS,
            netns_name: Some("rz2".into()),
            ifindex: IfIndex(9),
            ifname: "veth0p".into(),
            kind: Some("veth".into()),
            sockets: vec![tied(peer.clone(), Binding::Device)],
            netns_sockets: vec![peer],
        }],
        tun_holders: vec![],
    }
}

fn comm() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..3].copy_from_slice(b"app");
    c
}

fn send_err(ts_ns: u64, errno: i32, ino: u64) -> Event {
    Event::SendError(crate::model::kernel_event::SendError::from_record(&ifsock_common::SendErrorEvent {
        kind: ifsock_common::EventKind::SendError as u32, pid: 7, ts_ns, ret: -i64::from(errno), ino, tid: 8, fd: 3, comm: comm(),
    }))
}

fn inflight(tid: u32, ino: u64, netns: NetnsIno, since_ns: u64) -> ifsock_common::InFlightRecv {
    // SAFETY: InFlightRecv is a POD record; all-zero is a valid value.
    let mut e: ifsock_common::InFlightRecv = unsafe { std::mem::zeroed() };
    e.since_ns = since_ns;
    e.ino = ino;
    e.pid = 7;
    e.tid = tid;
    e.fd = 4;
    e.syscall = 45;
    e.netns = netns.0;
    e.comm = comm();
    e
}

fn recv_done(tid: u32, ino: u64, since_ns: u64, ts_ns: u64, ret: i64) -> Event {
    Event::RecvDone(crate::model::kernel_event::RecvDone::from_record(&ifsock_common::RecvDoneEvent {
        kind: ifsock_common::EventKind::RecvDone as u32, _pad: 0, ts_ns, ret, entry: inflight(tid, ino, NS, since_ns),
    }))
}

fn blocked(tid: u32, sock: SockKey) -> BlockedRecv {
    BlockedRecv { pid: 7, tid, comm: "app".into(), fd: Some(4), syscall: "recvfrom", sock, source: ReceiverSource::WaitQueue }
}

fn sock_of(r: &TeardownReport, ino: u64) -> &SocketSeen {
    r.sockets.iter().chain(r.companions.iter().flat_map(|c| &c.sockets)).find(|s| s.tied.socket.inode.0 == ino).expect("socket listed")
}

#[test]
fn send_errors_aggregate_per_thread_fd_and_errno() {
    let mut obs = Observer::new([(NS, 42)], vec![], T0);
    obs.on_event(&send_err(1_000_600_000, libc::ENETUNREACH, 42));
    obs.on_event(&send_err(1_900_000_000, libc::ENETUNREACH, 42));
    obs.on_event(&send_err(1_950_000_000, libc::ENODEV, 42));
    obs.on_event(&send_err(1_950_000_000, libc::ENODEV, 43));
    let (sends, errs, recvs) = obs.for_socket((NS, 42));
    assert!(recvs.is_empty() && errs.is_empty());
    assert_eq!(sends.len(), 2);
    let unreach = sends.iter().find(|s| s.errno == libc::ENETUNREACH).unwrap();
    assert_eq!((unreach.error.as_str(), unreach.count, unreach.first_ms, unreach.last_ms), ("ENETUNREACH", 2, 0.6, 900.0));
    assert!(obs.for_socket((NS, 43)).0.is_empty(), "socket not tied to the interface");
    assert_eq!(ms_since(999_000_000, T0), -1.0);
}

#[test]
fn kernel_reported_errors_aggregate_per_socket_and_errno_and_classic_reports_match_by_address() {
    let mut l = [0u8; 16];
    l[..4].copy_from_slice(&[10, 9, 0, 1]);
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&[10, 9, 0, 2]);
    let s = Socket::from_record(&ifsock_common::SockRecord {
        sk: 1, cookie: 0, ino: 42, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 1, lport: 5000, rport: 9,
        flags: 0, laddr: l, raddr: r, rx_queue: 0, drops: 0,
    });
    let mut obs = Observer::new([(NS, 42)], vec![s], T0);
    let ev = |ts_ns: u64, error: i32, ino: u64, via: u32| {
        Event::SockError(crate::model::sock_error::SockError::from_event(&ifsock_common::SockErrorEvent {
            kind: ifsock_common::EventKind::SockError as u32, error, ts_ns, sk: 0, ino, netns: if ino == 0 { 0 } else { 7 },
            bound_dev_if: 0, family: 2, protocol: 17, lport: 5000, rport: 9, laddr: l, raddr: r, pid: 0, tid: 0, comm: [0; 16], via, _pad: 0,
        }))
    };
    obs.on_event(&ev(990_000_000, libc::ECONNREFUSED, 42, ifsock_common::sock_error_via::TP_BTF));
    obs.on_event(&ev(1_200_000_000, libc::ECONNREFUSED, 0, ifsock_common::sock_error_via::TRACEPOINT));
    obs.on_event(&ev(1_300_000_000, libc::ECONNREFUSED, 43, ifsock_common::sock_error_via::TP_BTF));
    let (_, seen, _) = obs.for_socket((NS, 42));
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].error.as_str(), seen[0].count, seen[0].first_ms, seen[0].last_ms), ("ECONNREFUSED", 2, -10.0, 200.0));
    assert_eq!(seen[0].remote.to_string(), "10.9.0.2:9");
    assert!(obs.for_socket((NS, 43)).1.is_empty(), "socket not tied to the interface");
}

#[test]
fn receivers_blocked_at_down_that_woke_and_that_stayed_blocked() {
    let mut obs = Observer::new([(NS, 42), (NS, 43)], vec![], T0);
    obs.blocked_at_down(&[blocked(10, (NS, 42)), blocked(11, (NS, 43)), blocked(12, (NS, 99))]);
    // tid 10 wakes with ENETDOWN after down; tid 11 never wakes; tid 13 enters after down and returns data.
    obs.on_event(&recv_done(10, 42, 500_000_000, 1_250_000_000, -i64::from(libc::ENETDOWN)));
    obs.on_event(&recv_done(13, 42, 1_100_000_000, 1_300_000_000, 16));
    obs.on_event(&recv_done(13, 42, 1_300_000_000, 1_400_000_000, 8));
    obs.blocked_at_end(&[blocked(11, (NS, 43)), blocked(13, (NS, 42))]);
    let (_, _, r42) = obs.for_socket((NS, 42));
    let (_, _, r43) = obs.for_socket((NS, 43));
    let woke = r42.iter().find(|r| r.tid == 10).unwrap();
    assert!(woke.blocked_at_down && !woke.blocked_at_end);
    assert_eq!((woke.woke_ms, woke.ret, woke.error.as_deref()), (Some(250.0), Some(-i64::from(libc::ENETDOWN)), Some("ENETDOWN")));
    let later = r42.iter().find(|r| r.tid == 13).unwrap();
    assert!(!later.blocked_at_down && later.blocked_at_end, "entered after down, blocked again at end");
    assert_eq!((later.woke_ms, later.ret, later.syscall.as_str(), later.fd), (Some(300.0), Some(16), "recvfrom", Some(4)), "first wake-up kept");
    assert_eq!(r43.len(), 1);
    assert!(r43[0].blocked_at_down && r43[0].blocked_at_end && r43[0].woke_ms.is_none(), "nothing woke it");
    assert!(obs.for_socket((NS, 99)).2.is_empty(), "socket not watched");
}

#[test]
fn full_sequence_reports_closed_sockets_peer_observation_and_deletion() {
    let mut td = Teardown::new(plan(false));
    assert_eq!(td.next(), Next::SetDown);
    td.down_sent(T0);
    td.down_done(T0 + 300_000, StepOutcome::Ok, &[blocked(10, (PEER_NS, 50))]);
    assert_eq!(td.next(), Next::Observe);
    td.on_event(&send_err(T0 + 900_000, libc::ENETUNREACH, 44));
    td.on_event(&send_err(T0 + 1_000_000, libc::ENETUNREACH, 50));
    assert_eq!(td.state_left(), LeftState::Down);
    let alive: HashSet<SockKey> = [(NS, 44), (PEER_NS, 50)].into_iter().collect();
    td.grace_over(&[blocked(10, (PEER_NS, 50))], Some(alive));
    assert_eq!(td.next(), Next::Delete);
    td.delete_done(T0 + 1_000_000_000, T0 + 1_010_000_000, StepOutcome::Ok);
    assert_eq!(td.next(), Next::AfterDelete, "the place for a step after the delete");
    td.after_delete_done();
    td.companions_checked(vec![Some(true)]);
    assert_eq!(td.next(), Next::Report);
    let r = td.report(Some(Counters::default()));
    assert_eq!((r.state_left, r.gone, r.interrupted, r.error.as_deref()), (LeftState::Deleted, true, false, None));
    assert_eq!(r.delete.as_ref().map(|d| (d.at_ms, d.ack_ms, d.ok)), Some((1000.0, 1010.0, true)));
    assert!(sock_of(&r, 42).closed, "gone from the end snapshot");
    let wildcard = sock_of(&r, 44);
    assert!(!wildcard.closed);
    assert_eq!(wildcard.send_errors[0].count, 1, "a wildcard socket that saw errors is listed");
    assert_eq!(r.wildcard_sockets, 0);
    let peer = &r.companions[0];
    assert_eq!((peer.relation, peer.fate, peer.gone, peer.netns_name.as_deref()), (Relation::VethPeer, "deleted", Some(true), Some("rz2")));
    let ps = &peer.sockets[0];
    assert_eq!((ps.send_errors.len(), ps.receivers.len(), ps.closed), (1, 1, false));
    assert!(ps.receivers[0].blocked_at_down && ps.receivers[0].blocked_at_end);
    assert!(r.restore.is_none() && r.finish.is_none());
}

#[test]
fn quiet_wildcard_sockets_are_counted_not_listed_and_a_dry_run_changes_nothing() {
    let mut td = Teardown::new(plan(true));
    assert_eq!(td.next(), Next::Report, "a dry run does nothing");
    td.blocked_now(&[blocked(10, (NS, 42))]);
    let r = td.report(None);
    assert_eq!((r.state_left, r.gone, r.down.is_none(), r.delete.is_none()), (LeftState::Untouched, false, true, true));
    assert_eq!(r.sockets.len(), 1);
    assert_eq!(r.wildcard_sockets, 1);
    assert!(!r.sockets[0].closed, "no end snapshot: nothing is called closed");
    assert_eq!(r.sockets[0].receivers.len(), 1);
    assert_eq!(r.companions[0].gone, None);
}

#[test]
fn vanished_interface_is_not_deleted() {
    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0 + 100_000, StepOutcome::Ok, &[]);
    td.vanished(T0 + 400_000_000);
    td.vanished(T0 + 500_000_000);
    td.grace_over(&[], None);
    assert_eq!(td.next(), Next::Report, "never delete a vanished interface");
    let r = td.report(None);
    assert_eq!((r.vanished_ms, r.gone, r.state_left), (Some(400.0), true, LeftState::Gone));
    assert!(r.delete.is_none());

    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0, StepOutcome::Refused { errno: Some(libc::ENODEV), error: "ENODEV: No such device".into() }, &[]);
    assert_eq!(td.next(), Next::Report);
    let r = td.report(None);
    assert_eq!((r.vanished_ms, r.error.as_deref(), r.state_left), (Some(0.0), None, LeftState::Gone));

    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0, StepOutcome::Ok, &[]);
    td.grace_over(&[], None);
    td.delete_done(T0 + 5, T0 + 6, StepOutcome::Refused { errno: Some(libc::ENODEV), error: "ENODEV: No such device".into() });
    assert_eq!((td.next(), td.state_left()), (Next::Report, LeftState::Gone));
}

#[test]
fn interrupted_report_says_down_not_deleted_and_how_to_restore_or_finish() {
    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0 + 100_000, StepOutcome::Ok, &[]);
    td.interrupt(Stop::Sigterm);
    td.interrupt(Stop::Sigint);
    td.grace_over(&[], Some(HashSet::new()));
    assert_eq!(td.next(), Next::Report, "an interrupted teardown never deletes");
    let r = td.report(None);
    assert_eq!((r.interrupted, r.signal, r.state_left, r.gone), (true, Some(Stop::Sigterm), LeftState::Down, false));
    assert!(r.delete.is_none());
    assert_eq!(r.restore.as_deref(), Some("ip -n rz1 link set veth0 up"));
    assert_eq!(r.finish.as_deref(), Some("ifsock --netns rz1 teardown veth0 --grace 0 --yes"));
}

#[test]
fn failed_steps_leave_a_stated_state() {
    let refused = || StepOutcome::Refused { errno: Some(libc::EPERM), error: "EPERM: Operation not permitted".into() };
    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0, refused(), &[]);
    let r = td.report(None);
    assert_eq!((td.next(), r.state_left), (Next::Report, LeftState::Untouched));
    assert!(r.error.as_deref().is_some_and(|e| e.contains("setting veth0 down") && e.contains("EPERM")), "{:?}", r.error);

    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0, StepOutcome::Ok, &[]);
    td.grace_over(&[], None);
    td.delete_done(T0 + 5, T0 + 6, refused());
    let r = td.report(None);
    assert_eq!((td.next(), r.state_left, r.gone), (Next::Report, LeftState::Down, false));
    assert!(r.finish.is_some() && r.error.as_deref().is_some_and(|e| e.contains("RTM_DELLINK")));

    let mut td = Teardown::new(plan(false));
    td.down_sent(T0);
    td.down_done(T0, StepOutcome::Ok, &[]);
    td.fail("taking the end-of-grace socket snapshot: boom".into());
    assert_eq!((td.next(), td.state_left()), (Next::Report, LeftState::Down));
}

#[test]
fn abort_candidates_are_stranded_bound_or_blocked_sockets_still_there() {
    use crate::model::stranded::{StrandReason, Stranded};
    let mut p = plan(false);
    let listen = {
        let mut l = sock(NS, 46, 5003, 5, [0, 0, 0, 0]);
        l.protocol = crate::model::socket::Protocol::Tcp;
        l.state = "LISTEN";
        l
    };
    p.sockets.push(tied(listen.clone(), Binding::Device));
    let td = Teardown::new(p);
    let dead = |s: &Socket| (s.bound_dev_if != 0).then_some(Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(IfIndex(s.bound_dev_if)), ifname: None, now_ifindex: None, address: None, since_unix_ns: None });
    let now = vec![sock(NS, 42, 5000, 5, [0; 4]), sock(NS, 44, 5002, 0, [0; 4]), sock(PEER_NS, 50, 6000, 9, [0; 4]), listen];
    // The wildcard socket 44 is chosen only because a receiver is still blocked on it.
    let (t, skipped) = td.abort_candidates(&now, &[blocked(9, (NS, 44))], dead);
    let got: Vec<_> = t.iter().map(|t| (t.socket.inode.0, t.because.clone())).collect();
    assert_eq!(got, vec![(42, vec!["stranded"]), (44, vec!["blocked"]), (50, vec!["stranded"])]);
    assert_eq!(skipped.iter().map(|s| s.inode.0).collect::<Vec<_>>(), vec![46], "LISTEN kept");
    // Closed since the plan, or the inode reused by another socket (cookie differs): not chosen.
    let mut reused = sock(NS, 42, 5000, 5, [0; 4]);
    reused.cookie = 99;
    let (t, _) = td.abort_candidates(&[reused], &[], dead);
    assert!(t.is_empty());
    // Healthy and nobody blocked: nothing to destroy.
    let (t, _) = td.abort_candidates(&now, &[], |_| None);
    assert!(t.is_empty());
    // The dry run predicts: bound to the target or to the veth peer → device_deleted.
    let pred = |s: &Socket| td.predicted_stranded(s).map(|st| (st.reason.name(), st.ifname));
    assert_eq!(pred(&now[0]), Some(("device_deleted", Some("veth0".into()))));
    assert_eq!(pred(&now[2]), Some(("device_deleted", Some("veth0p".into()))));
    assert_eq!(pred(&now[1]), None, "a wildcard socket is not predicted stranded");
}
