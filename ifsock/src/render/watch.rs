//! `watch` output: one JSON object per [`WatchRecord`] (`--json`), or one human line per record
//! on stdout, with the `ready` and `counters` lines on stderr (they describe the run, not the
//! interfaces).

use anyhow::Result;

use super::{clock, fmt, json_line, line};
use crate::{
    engine::watch::{ChangeEvent, ChangeSocketsEvent, NetnsRemovedRecord, Ready, SockErrorLine, Source, StrandedEvent, WatchCounters, WatchRecord},
    model::{sock_error::InodeSource, socket::Binding, tie::TiedSocket},
};

/// Prints one record.
///
/// # Errors
/// [`super::StdoutClosed`] when the reader of stdout went away.
pub fn record(r: &WatchRecord, json: bool) -> Result<()> {
    if json {
        json_line(r)?;
        if let WatchRecord::Counters(c) = r {
            stderr(&counters_line(&c.counters));
        }
        return Ok(());
    }
    match r {
        WatchRecord::Ready(r) => {
            stderr(&ready_line(r));
            tracing::info!("{}", ready_details(r));
        }
        WatchRecord::Change(c) => {
            for l in change_lines(c) {
                line(&l)?;
            }
        }
        WatchRecord::ChangeSockets(c) => {
            for l in change_sockets_lines(c) {
                line(&l)?;
            }
        }
        WatchRecord::ReceiverStranded(s) => super::alert_line(&stranded_line(s))?,
        WatchRecord::SocketError(e) => line(&sock_error_line(e))?,
        WatchRecord::SocketStranded(e) => super::alert_line(&format!("{} {}", clock(e.ts_unix_ns), super::health::health_line(e, false)))?,
        WatchRecord::SocketRecovered(e) => line(&format!("{} {}", clock(e.ts_unix_ns), super::health::health_line(e, true)))?,
        WatchRecord::SocketStillStranded(e) => line(&format!("{} {}", clock(e.ts_unix_ns), super::health::still_line(e)))?,
        WatchRecord::NetnsAdded(n) => line(&format!("{} netns_added {}{}", clock(n.ts_unix_ns), n.netns, paren(n.netns_name.as_deref())))?,
        WatchRecord::NetnsRemoved(n) => line(&netns_removed_line(n))?,
        // The final table is for scripts (`--json`); people saw every change already.
        WatchRecord::State(_) => {}
        WatchRecord::Counters(c) => stderr(&counters_line(&c.counters)),
    }
    Ok(())
}

/// Diagnostics on stderr: a closed stderr is not worth failing the run for.
fn stderr(text: &str) {
    super::err_line(text);
}

fn paren(name: Option<&str>) -> String {
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

/// The start-up line on stderr, short: `watching 1 netns (3 links), tracepoint probes; Ctrl-C
/// to stop, -v for details`. A path that is not traced, or a weaker probe set than the best, is
/// named (`no socket errors`); where receivers come from (the sockets' wait queues, or the
/// receive probes with `--record-receives`) is in [`ready_details`] with the rest.
pub fn ready_line(r: &Ready) -> String {
    let missing = if r.sock_errors.is_none() { " (no socket errors)" } else { "" };
    format!(
        "watching {} netns ({} links), {} probes{missing}; Ctrl-C to stop, -v for details",
        r.netns.len(),
        r.links,
        r.probe_set.chosen.name(),
    )
}

/// Said on stderr when `watch --iface NAME` names no interface that exists at start: `no
/// interface "wg1" in this netns yet: waiting for it (did you mean "wg0"? interfaces here: lo, wg0)`.
pub fn waiting_for_line(name: &str, all_netns: bool, present: &[String]) -> String {
    let scope = if all_netns { "any followed netns" } else { "this netns" };
    let help = crate::model::names::unknown_help(name, present.iter().map(String::as_str));
    format!("no interface {name:?} in {scope} yet: waiting for it ({help})")
}

/// What [`ready_line`] leaves out, logged at `-v`: `device path: probe set: tracepoint; fentry
/// refused: …; receive path: …; socket errors: …; rtnetlink rcvbuf 212992 bytes`.
pub fn ready_details(r: &Ready) -> String {
    let recv = r
        .recv_probe_set
        .as_ref()
        .map_or("receive path: untraced (receivers from the sockets' wait queues, blocked times estimated from the scheduler and shown as ~; --record-receives makes them exact)".to_string(), |s| format!("receive path: {s}"));
    let sock_errors = match (r.sock_errors, &r.sock_errors_refused) {
        (Some(p), None) => format!("socket errors: {p}"),
        (Some(p), Some(why)) => format!("socket errors: {p} ({why})"),
        (None, Some(why)) => format!("socket errors unavailable: {why}"),
        (None, None) => "socket errors unavailable".to_string(),
    };
    let rcvbuf = r.rcvbuf.map_or(String::new(), |b| format!("; rtnetlink rcvbuf {b} bytes"));
    format!("device path: {}; {recv}; {sock_errors}{rcvbuf}", r.probe_set)
}

/// The change line, then one indented line per socket bound to the interface (wildcard
/// sockets are only counted).
pub fn change_lines(ev: &ChangeEvent) -> Vec<String> {
    let c = &ev.change;
    let mut head = format!("{} {:<15} ifindex {:<4} {}", clock(ev.ts_unix_ns), c.kind.name(), c.ifindex, c.name);
    if let Some(old) = &c.old_name {
        head.push_str(&format!(" (was {old})"));
    }
    if let Some(old) = c.old_ifindex {
        head.push_str(&format!(" (was ifindex {old})"));
    }
    if let Some(a) = c.address {
        head.push_str(&format!(" {a}"));
    }
    if ev.source != Source::Netlink {
        head.push_str(&format!(" [{}]", ev.source.name()));
    }
    if let Some(cause) = &ev.cause {
        head.push_str(&format!(" by {}[{}] {}", cause.comm, cause.pid, cause.request));
        if cause.evidence.starts_with("peer of") {
            head.push_str(&format!(" ({})", cause.evidence));
        }
    }
    if ev.sockets_follow {
        head.push_str("; sockets follow");
    }
    let mut out = vec![head];
    socket_lines(&ev.sockets, &mut out);
    out
}

/// `HH:MM:SS.mmm change_sockets  down ifindex 4 vb (change at HH:MM:SS.mmm, also deleted); sockets: 1
/// bound, 2 wildcard`, then one indented line per bound socket (the default; not `--sockets-inline`).
pub fn change_sockets_lines(ev: &ChangeSocketsEvent) -> Vec<String> {
    let also = if ev.also.is_empty() { String::new() } else { format!(", also {}", ev.also.iter().map(|a| a.event).collect::<Vec<_>>().join(", ")) };
    let mut out = vec![format!("{} {:<15} {} ifindex {} {} (change at {}{also})", clock(ev.ts_unix_ns), "change_sockets", ev.event, ev.ifindex, ev.name, clock(ev.change_ts_unix_ns))];
    if ev.sockets.is_empty() {
        out[0].push_str("; no sockets");
    }
    socket_lines(&ev.sockets, &mut out);
    out
}

/// Appends `; sockets: N bound, M wildcard` to `out[0]` (when there are any) and one indented
/// line per bound socket (wildcard sockets are only counted).
fn socket_lines(sockets: &[TiedSocket], out: &mut Vec<String>) {
    let bound: Vec<&TiedSocket> = sockets.iter().filter(|s| !matches!(s.binding, Some(Binding::Wildcard))).collect();
    let wildcard = sockets.len() - bound.len();
    if !sockets.is_empty() {
        out[0].push_str(&format!("; sockets: {} bound, {} wildcard", bound.len(), wildcard));
    }
    for s in bound {
        out.push(format!(
            "    {} {:<8} {}:{} inode {} {}",
            fmt::protocol(s.socket.protocol),
            fmt::binding(s.binding),
            s.socket.local_addr,
            s.socket.local_port,
            s.socket.inode,
            fmt::owners(&s.socket.owners, "no owner")
        ));
    }
}

/// `receiver_stranded (interface_change) server[41]/tid 42 recvmsg fd 3 blocked 1.2s on veth-a (deleted, exact)`;
/// the blocked time is hung's BLOCKED cell (`~1.2s` when estimated from the scheduler).
pub fn stranded_line(s: &StrandedEvent) -> String {
    let r = &s.receiver;
    format!(
        "{} receiver_stranded ({}) {}[{}] tid {} {} fd {}{} blocked {} on {} ({}, {})",
        clock(s.ts_unix_ns),
        s.phase,
        r.comm,
        r.pid,
        r.tid,
        r.syscall,
        r.fd.map_or("?".into(), |f| f.to_string()),
        if r.fd_open { "" } else { " (closed)" },
        super::hung::blocked_cell(r),
        s.change.name,
        s.change.kind.name(),
        r.certainty.name(),
    )
}

/// One `socket_error` line.
pub fn sock_error_line(e: &SockErrorLine) -> String {
    let mut l = format!(
        "{} {:<15} {} (errno {}) {}{} {} -> {} inode {}",
        clock(e.ts_unix_ns),
        "socket_error",
        e.error,
        e.errno,
        e.protocol.as_deref().unwrap_or("ip"),
        e.family,
        e.local,
        e.remote,
        e.inode.map_or("-".to_string(), |i| i.to_string()),
    );
    if e.inode_source == Some(InodeSource::Snapshot) {
        l.push_str(" (matched by address)");
    }
    if e.bound_dev_if != 0 {
        l.push_str(&format!(" dev {} {}", e.bound_dev_if, e.bound_dev_name.as_deref().unwrap_or("?")));
    }
    l.push_str(&format!(" netns {}; current task {}[{}]", e.netns, e.task.comm, e.task.pid));
    l
}

/// `netns_removed 4026532177 (rz3): unreachable by name; 2 interface(s) went with it; kept
/// alive only by ifsock, released`.
pub fn netns_removed_line(n: &NetnsRemovedRecord) -> String {
    let holders = match (n.still_exists, n.held_by_ifsock, n.other_holders.is_empty()) {
        (false, _, _) => "already destroyed".to_string(),
        (true, true, true) => "kept alive only by ifsock, released".to_string(),
        (true, _, false) => format!(
            "still held by pid(s) {}{}",
            n.other_holders.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            if n.held_by_ifsock { "; ifsock's hold released" } else { "" }
        ),
        (true, false, true) => "still exists".to_string(),
    };
    format!(
        "{} netns_removed {}{}: unreachable by name; {} interface(s) went with it; {holders}",
        clock(n.ts_unix_ns),
        n.netns,
        paren(n.netns_name.as_deref()),
        n.links
    )
}

/// `counters: netlink_messages=… events=… …` (stderr, on exit).
pub fn counters_line(c: &WatchCounters) -> String {
    let bpf = match &c.bpf {
        Some(b) => format!("ringbuf_drops={} link_requests={}", b.ringbuf_drops, b.link_requests),
        None => "bpf counters unreadable".to_string(),
    };
    format!(
        "counters: netlink_messages={} events={} enobufs={} resyncs={} resync_changes={} reconciles={} reconcile_changes={} {bpf} socket_errors={} socket_errors_unmatched={}",
        c.netlink_messages, c.events, c.enobufs, c.resyncs, c.resync_changes, c.reconciles, c.reconcile_changes, c.socket_errors, c.socket_errors_unmatched
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        engine::watch::{CountersRecord, StateLink, StateRecord},
        model::{
            event::Cause,
            ids::{IfIndex, NetnsIno, SockInode},
            link::{Change, ChangeKind, Link, LinkTable},
            sock_error::SockError,
            socket::Socket,
        },
        probes::select::{ProbeSet, Selection},
    };

    fn report(via: u32, bound_dev_if: u32) -> SockError {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut comm = [0u8; 16];
        comm[..9].copy_from_slice(b"swapper/1");
        SockError::from_event(&ifsock_common::SockErrorEvent {
            kind: ifsock_common::EventKind::SockError as u32, error: 111, ts_ns: 0, sk: 0x1000, ino: 4242,
            netns: 4026532177, bound_dev_if, family: 2, protocol: 17, lport: 40000, rport: 9, laddr: addr, raddr: addr,
            pid: 0, tid: 0, comm, via, _pad: 0,
        })
    }

    #[test]
    fn socket_error_lines_carry_errno_name_endpoints_and_inode() {
        let links = LinkTable::from_links([Link { ifindex: IfIndex(3), name: "veth-a".into(), flags: 0, addrs: BTreeSet::new() }]);
        let line = SockErrorLine::new(&report(ifsock_common::sock_error_via::TP_BTF, 3), 0, NetnsIno(4026532177), Some("demo".into()), None, &links);
        let v = serde_json::to_value(WatchRecord::SocketError(line.clone())).unwrap();
        assert_eq!(v["type"], "socket_error");
        assert_eq!((v["error"].as_str(), v["errno"].as_i64()), (Some("ECONNREFUSED"), Some(111)));
        assert_eq!((v["netns"].as_u64(), v["inode"].as_u64()), (Some(4026532177), Some(4242)));
        assert_eq!((v["local"].as_str(), v["remote"].as_str()), (Some("127.0.0.1:40000"), Some("127.0.0.1:9")));
        assert_eq!((v["bound_dev_if"].as_u64(), v["bound_dev_name"].as_str()), (Some(3), Some("veth-a")));
        assert_eq!((v["via"].as_str(), v["inode_source"].as_str(), v["protocol"].as_str()), (Some("tp_btf"), Some("sk"), Some("udp")));
        assert_eq!(v["task"]["comm"], "swapper/1");
        let human = sock_error_line(&line);
        assert!(
            human.ends_with("socket_error    ECONNREFUSED (errno 111) udp4 127.0.0.1:40000 -> 127.0.0.1:9 inode 4242 dev 3 veth-a netns 4026532177; current task swapper/1[0]"),
            "{human}"
        );
    }

    #[test]
    fn classic_reports_take_inode_and_device_from_the_matched_socket() {
        let e = report(ifsock_common::sock_error_via::TRACEPOINT, 0);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let s = Socket::from_record(&ifsock_common::SockRecord {
            sk: 1, cookie: 0, ino: 99, netns: 7, uid: 0, bound_dev_if: 5, family: 2, protocol: 17, state: 1, lport: 40000, rport: 9,
            flags: 0, laddr: addr, raddr: addr, rx_queue: 0, drops: 0,
        });
        let line = SockErrorLine::new(&e, 0, NetnsIno(7), None, Some(&s), &LinkTable::default());
        assert_eq!((line.inode, line.inode_source, line.bound_dev_if), (Some(SockInode(99)), Some(InodeSource::Snapshot), 5));
        assert!(sock_error_line(&line).contains("inode 99 (matched by address) dev 5 ?"), "{}", sock_error_line(&line));
    }

    fn change_event(source: Source, cause: Option<Cause>) -> ChangeEvent {
        ChangeEvent {
            ts_unix_ns: 3_723_004_000_000,
            source,
            netns: NetnsIno(7),
            netns_name: Some("demo".into()),
            from_netns: None,
            change: Change { kind: ChangeKind::Deleted, ifindex: IfIndex(4), name: "vb".into(), old_name: None, old_ifindex: None, address: None },
            cause,
            kernel: None,
            sockets: Vec::new(),
            sockets_follow: false,
        }
    }

    #[test]
    fn stranded_line_marks_a_scheduler_estimate_as_hungs_table_does() {
        let ev = change_event(Source::Netlink, None);
        let mut s = StrandedEvent { phase: "interface_change", ts_unix_ns: ev.ts_unix_ns, change: ev.change, receiver: crate::render::hung::tests::row() };
        let line = stranded_line(&s);
        assert!(line.contains(" blocked ~1.5s on vb (deleted, current_fd)"), "{line}");
        s.receiver.blocked_since_source = crate::model::receiver::BlockedSince::RecvProbe;
        assert!(stranded_line(&s).contains(" blocked 1.5s on vb "), "{}", stranded_line(&s));
        s.receiver.blocked_ns = None;
        assert!(stranded_line(&s).contains(" blocked ? on vb "), "{}", stranded_line(&s));
    }

    #[test]
    fn change_json_keeps_its_field_names_and_the_human_line_its_shape() {
        let cause = Cause { pid: 77, tid: 77, comm: "ip".into(), request: "RTM_DELLINK", evidence: "peer of 3".into() };
        let ev = change_event(Source::NetnsRemoved, Some(cause));
        let v = serde_json::to_value(WatchRecord::Change(ev.clone())).unwrap();
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["type", "ts_unix_ns", "source", "netns", "netns_name", "event", "ifindex", "name", "cause", "sockets"]));
        assert_eq!((v["type"].as_str(), v["event"].as_str(), v["source"].as_str()), (Some("change"), Some("deleted"), Some("netns_removed")));
        assert_eq!(v["cause"]["evidence"], "peer of 3");
        assert_eq!(change_lines(&ev), vec!["01:02:03.004 deleted         ifindex 4    vb [netns_removed] by ip[77] RTM_DELLINK (peer of 3)"]);
        let live = change_event(Source::Netlink, None);
        assert_eq!(change_lines(&live), vec!["01:02:03.004 deleted         ifindex 4    vb"]);
        assert_eq!(serde_json::to_value(WatchRecord::Change(change_event(Source::KernelNetlink, None))).unwrap()["source"], "kernel+netlink");
    }

    #[test]
    fn ready_state_and_counters_lines_are_typed_with_todays_fields() {
        let ready = Ready {
            netns: vec![NetnsIno(7)],
            probe_set: Selection { chosen: ProbeSet::Tracepoint, refused: vec![] },
            recv_probe_set: None,
            links: 3,
            recv_tracking: false,
            sock_errors: None,
            sock_errors_refused: Some("tp_btf: EPERM".into()),
            rcvbuf: Some(8192),
        };
        let v = serde_json::to_value(WatchRecord::Ready(ready.clone())).unwrap();
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["type", "netns", "probe_set", "recv_probe_set", "links", "recv_tracking", "sock_errors", "sock_errors_refused", "rcvbuf"])
        );
        assert_eq!((v["type"].as_str(), v["rcvbuf"].as_u64()), (Some("ready"), Some(8192)));
        assert!(ready_details(&ready).contains("rtnetlink rcvbuf 8192 bytes"), "{}", ready_details(&ready));
        assert_eq!(
            ready_line(&ready),
            "watching 1 netns (3 links), tracepoint probes (no socket errors); Ctrl-C to stop, -v for details"
        );
        // One line with the missing path; where receivers come from is in the details.
        assert!(ready_line(&ready).len() <= 120);
        assert!(ready_details(&ready).contains("receive path: untraced (receivers from the sockets' wait queues"), "{}", ready_details(&ready));
        let state = WatchRecord::State(StateRecord { netns: NetnsIno(7), netns_name: None, links: vec![StateLink { ifindex: IfIndex(1), name: "lo".into(), flags: 9 }] });
        let v = serde_json::to_value(state).unwrap();
        assert_eq!((v["type"].as_str(), v["links"][0]["name"].as_str(), v["links"][0]["flags"].as_u64()), (Some("state"), Some("lo"), Some(9)));
        let counters = WatchCounters { enobufs: 2, bpf: Some(crate::probes::Counters::default()), ..Default::default() };
        let v = serde_json::to_value(WatchRecord::Counters(CountersRecord { counters })).unwrap();
        assert_eq!((v["type"].as_str(), v["counters"]["enobufs"].as_u64(), v["counters"]["ringbuf_drops"].as_u64()), (Some("counters"), Some(2), Some(0)));
        assert!(counters_line(&counters).contains("enobufs=2 ") && counters_line(&counters).contains("ringbuf_drops=0"));
        assert!(counters_line(&WatchCounters::default()).contains("bpf counters unreadable"), "a failed read is not shown as zeros");
    }

    #[test]
    fn netns_removed_says_who_keeps_it() {
        let mut n = NetnsRemovedRecord { ts_unix_ns: 0, netns: NetnsIno(7), netns_name: Some("rz3".into()), still_exists: true, held_by_ifsock: true, other_holders: vec![], links: 2 };
        assert!(netns_removed_line(&n).ends_with("netns_removed 7 (rz3): unreachable by name; 2 interface(s) went with it; kept alive only by ifsock, released"), "{}", netns_removed_line(&n));
        n.other_holders = vec![41, 42];
        assert!(netns_removed_line(&n).ends_with("still held by pid(s) 41, 42; ifsock's hold released"), "{}", netns_removed_line(&n));
        let v = serde_json::to_value(WatchRecord::NetnsRemoved(n)).unwrap();
        assert_eq!((v["type"].as_str(), v["held_by_ifsock"].as_bool(), v["other_holders"][1].as_u64()), (Some("netns_removed"), Some(true), Some(42)));
    }

    #[test]
    fn a_change_sockets_line_names_the_changes_of_its_burst_it_also_covers() {
        use crate::engine::watch::AlsoChange;
        let ev = ChangeSocketsEvent {
            ts_unix_ns: 2_000_000_000,
            change_ts_unix_ns: 1_000_000_000,
            netns: NetnsIno(7),
            netns_name: None,
            event: "down",
            ifindex: IfIndex(5),
            name: "a".into(),
            sockets: Vec::new(),
            also: vec![AlsoChange { event: "deleted", change_ts_unix_ns: 1_000_000_000 }],
        };
        let lines = change_sockets_lines(&ev);
        assert!(lines[0].contains("down ifindex 5 a (change at ") && lines[0].contains(", also deleted)"), "{lines:?}");
        let none = ChangeSocketsEvent { also: Vec::new(), ..ev };
        assert!(!change_sockets_lines(&none)[0].contains("also"), "{:?}", change_sockets_lines(&none));
    }
}
