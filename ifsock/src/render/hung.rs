//! `hung` output: the receivers table, one JSON object per receiver, and the `--follow`
//! records (`ready`, `snapshot`). Field names are those of [`HungReceiver`]. Event loops waiting
//! on stranded sockets ([`EventLoopWaiter`]) are kept apart: a second table, `event_loop` JSON
//! records (one-shot) or the snapshot's `event_loops` array (`--follow`).
use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use super::{fmt, human_ns, json_line, table_fit, Fit};
use crate::kernel::clock::unix_ns;
use crate::{
    engine::health::EventLoopWaiter,
    model::{ids::NetnsIno, receiver::HungReceiver},
    probes::select::Selection,
};

/// `{"type":"ready","netns":[…],"record_receives","probe_set","probes"}`: `--follow` lists
/// receivers from now on; with `--record-receives` it records receives too (`probe_set` is
/// `null` without it). `netns` is a list, as in `watch`'s `ready` record (one shape across
/// commands).
#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    /// Always `ready`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The netns ifsock runs in (one element; a list, as `watch` writes it).
    pub netns: [NetnsIno; 1],
    /// Whether receives are recorded (`--record-receives`): exact blocked-since times.
    pub record_receives: bool,
    /// The receive-path probe set and why better ones were refused (`null`: no receive probes).
    pub probe_set: Option<&'a Selection>,
    /// Attached programs.
    pub probes: &'a [String],
}

/// `{"type":"snapshot","ts_unix_ns","receivers":[…]}`: one `--follow` interval.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    /// Always `snapshot`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Wall clock of the scan, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Receivers, longest blocked first.
    pub receivers: &'a [HungReceiver],
    /// Event-loop threads (epoll, poll, select, unknown waits) whose interest set holds a
    /// stranded socket, by (pid, tid, inode).
    pub event_loops: &'a [EventLoopWaiter],
}

/// `{"type":"event_loop", …EventLoopWaiter}`: one-shot JSON line per event-loop waiter, after
/// the receiver objects (which carry no `type`).
#[derive(Debug, Serialize)]
pub struct EventLoopLine<'a> {
    /// Always `event_loop`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The row.
    #[serde(flatten)]
    pub row: &'a EventLoopWaiter,
}

/// How the receivers are printed.
#[derive(Debug, Clone, Default)]
pub struct Style {
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// `--follow`: JSON receivers grouped in one `snapshot` object per scan.
    pub follow: bool,
    /// Add a NETNS column (`--all-netns`): the name under /run/netns when it has one, else
    /// the inode.
    pub netns_names: Option<HashMap<NetnsIno, String>>,
    /// What was searched, for the summary and the none-found line: `netns blue (4026532000)`
    /// or `every netns`.
    pub scope: String,
    /// The filters given, as typed (`--pid 41`, `--min-blocked 1s`).
    pub filters: Vec<String>,
}

/// `3 receivers, 1 stranded in netns blue (4026532000); 2 event loops on stranded sockets`.
pub fn summary(rows: &[HungReceiver], loops: &[EventLoopWaiter], style: &Style) -> String {
    let stranded = rows.iter().filter(|r| r.stranded).count();
    let mut s = format!("{}, {stranded} stranded in {}", super::count(rows.len(), "blocked receiver", "blocked receivers"), style.scope);
    if !loops.is_empty() {
        s.push_str(&format!("; {} on stranded sockets", super::count(loops.len(), "event loop", "event loops")));
    }
    s
}

/// `no blocked receivers found in netns 4026531833 (filters: --min-blocked 1s)`.
pub fn none_found(style: &Style) -> String {
    let filters = if style.filters.is_empty() { String::new() } else { format!(" (filters: {})", style.filters.join(", ")) };
    format!("no blocked receivers found in {}{filters}", style.scope)
}

/// Prints the `ready` record (JSON) or a line on stderr saying what is recorded.
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn ready(json: bool, netns: NetnsIno, selection: Option<&Selection>, probes: &[String]) -> Result<()> {
    if json {
        return json_line(&Ready { ty: "ready", netns: [netns], record_receives: selection.is_some(), probe_set: selection, probes });
    }
    super::err_line(&ready_line(selection));
    if let Some(selection) = selection {
        tracing::info!("receive path: {selection}; programs: {}", probes.join(", "));
    }
    Ok(())
}

/// The short start-up line of `hung --follow`: `recording receives, tracepoint probes; Ctrl-C
/// to stop, -v for details`, or, without `--record-receives`, where receivers come from; the
/// refusals and programs are logged at `-v`.
pub fn ready_line(selection: Option<&Selection>) -> String {
    match selection {
        Some(s) => format!("recording receives, {} probes; Ctrl-C to stop, -v for details", s.chosen.name()),
        None => "receivers from the sockets' wait queues, blocked times estimated (~; --record-receives for exact); Ctrl-C to stop".into(),
    }
}

/// A BLOCKED cell: `12.0s`, `~12.0s` when estimated from the scheduler, `?` when unknown.
pub fn blocked_cell(r: &HungReceiver) -> String {
    match (r.blocked_ns, r.blocked_since_source) {
        (None, _) => "?".into(),
        (Some(ns), crate::model::receiver::BlockedSince::RecvProbe) => human_ns(ns),
        (Some(ns), crate::model::receiver::BlockedSince::Scheduler) => format!("~{}", human_ns(ns)),
    }
}

/// Prints one scan: the receivers, then the event loops waiting on stranded sockets (the
/// second table only when there is one).
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn receivers(rows: &[HungReceiver], loops: &[EventLoopWaiter], style: &Style) -> Result<()> {
    if style.json {
        if style.follow {
            return json_line(&Snapshot { ty: "snapshot", ts_unix_ns: unix_ns(), receivers: rows, event_loops: loops });
        }
        for r in rows {
            json_line(r)?;
        }
        for row in loops {
            json_line(&EventLoopLine { ty: "event_loop", row })?;
        }
        return Ok(());
    }
    if rows.is_empty() && loops.is_empty() {
        return super::line(&none_found(style));
    }
    // NETNS (with --all-netns) shifts every column by one.
    let at = |i: usize| i + usize::from(style.netns_names.is_some());
    if !rows.is_empty() {
        let (header, cells) = cells(rows, style.netns_names.as_ref());
        let shrink = [(at(1), 8), (at(7), 20)];
        table_fit(&header, &cells, &Fit { shrink: &shrink, middle: &[], alert: Some(at(6)) })?;
    }
    if !loops.is_empty() {
        super::out(if rows.is_empty() { "event loops waiting on stranded sockets\n" } else { "\nevent loops waiting on stranded sockets\n" })?;
        let (header, cells) = loop_cells(loops, style.netns_names.as_ref());
        let shrink = [(at(1), 8), (at(4), 30)];
        table_fit(&header, &cells, &Fit { shrink: &shrink, middle: &[], alert: Some(at(5)) })?;
    }
    super::line(&summary(rows, loops, style))
}

/// The event-loop table: PID/TID, COMM, VIA (`epoll:epoll_wait`), FD/EPFD (`fd 3 @epfd 5`),
/// SOCKET (`udp 10.78.0.1:53 inode N`), STATUS (the strand reason and interface).
pub fn loop_cells(rows: &[EventLoopWaiter], netns_names: Option<&HashMap<NetnsIno, String>>) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["PID/TID", "COMM", "VIA", "FD/EPFD", "SOCKET", "STATUS"];
    if netns_names.is_some() {
        header.insert(0, "NETNS");
    }
    let cells = rows
        .iter()
        .map(|r| {
            let w = &r.waiter;
            let fd = format!("fd {}{}", w.fd.map_or("?".into(), |f| f.to_string()), w.epfd.map(|e| format!(" @epfd {e}")).unwrap_or_default());
            let why = w.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            let proto = fmt::protocol(r.protocol);
            let local = fmt::endpoint(&r.local_addr, false, r.local_port);
            let iface = match (&r.stranded.ifname, r.stranded.ifindex) {
                (Some(n), _) => format!(" {n}"),
                (None, Some(i)) => format!(" ifindex {i}"),
                _ => String::new(),
            };
            let mut row = vec![
                format!("{}/{}", w.pid, w.tid),
                w.comm.clone(),
                format!("{}:{}{why}", w.via.name(), w.syscall),
                fd,
                format!("{proto} {local} inode {}", r.inode),
                format!("{}{iface}", r.stranded.reason.name()),
            ];
            if let Some(names) = netns_names {
                row.insert(0, names.get(&r.netns).cloned().unwrap_or_else(|| r.netns.to_string()));
            }
            row
        })
        .collect();
    (header, cells)
}

/// The table: header and one row per receiver.
pub fn cells(rows: &[HungReceiver], netns_names: Option<&HashMap<NetnsIno, String>>) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["PID/TID", "COMM", "SYSCALL", "BLOCKED", "SOCKET", "CERTAINTY", "STATUS", "INTERFACES"];
    if netns_names.is_some() {
        header.insert(0, "NETNS");
    }
    let cells = rows
        .iter()
        .map(|r| {
            let sock = r.socket.as_ref().map_or("?".into(), |s| {
                let pktinfo = if s.pktinfo { " pktinfo" } else { "" };
                format!("{} {} inode {}{pktinfo}", fmt::protocol(s.protocol), fmt::local(s), s.inode)
            });
            let ifaces: Vec<String> = r
                .interfaces
                .iter()
                .map(|t| format!("{}({},{})", t.name.clone().unwrap_or_else(|| t.ifindex.to_string()), fmt::binding(Some(t.binding)), t.state.name()))
                .collect();
            let mut row = vec![
                format!("{}/{}", r.pid, r.tid),
                r.comm.clone(),
                format!("{}(fd {}{})", r.syscall, r.fd.map_or("?".into(), |f| f.to_string()), if r.fd_open { "" } else { ", closed" }),
                blocked_cell(r),
                sock,
                r.certainty.name().to_string(),
                if r.stranded { "STRANDED".into() } else { "-".into() },
                if ifaces.is_empty() { "-".into() } else { ifaces.join(" ") },
            ];
            if let Some(names) = netns_names {
                row.insert(0, names.get(&r.netns).cloned().unwrap_or_else(|| r.netns.to_string()));
            }
            row
        })
        .collect();
    (header, cells)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{
        ids::{IfIndex, SockInode},
        receiver::{Certainty, IfaceState, IfaceTie},
        socket::Binding,
    };

    /// A stranded `current_fd` receiver blocked ~1.5 s (a scheduler estimate); render/watch's tests use it too.
    pub(crate) fn row() -> HungReceiver {
        HungReceiver {
            pid: 10,
            tid: 11,
            comm: "srv".into(),
            syscall: "recvmsg",
            fd: Some(3),
            fd_open: true,
            blocked_ns: Some(1_500_000_000),
            blocked_source: "sched_exec_start",
            blocked_since_source: crate::model::receiver::BlockedSince::Scheduler,
            source: crate::model::receiver::ReceiverSource::Proc,
            probe: None,
            in_wait: None,
            certainty: Certainty::CurrentFd,
            evidence: String::new(),
            orphaned: false,
            netns: NetnsIno(7),
            socket: None,
            candidates: vec![SockInode(1)],
            interfaces: vec![IfaceTie { ifindex: IfIndex(2), name: Some("veth0".into()), binding: Binding::Device, state: IfaceState::Down }],
            stranded: true,
        }
    }

    #[test]
    fn table_and_json_spell_certainty_alike() {
        let (header, cells) = cells(&[row()], None);
        assert_eq!(header[5], "CERTAINTY");
        assert_eq!(cells[0][5], "current_fd");
        assert_eq!(cells[0][6], "STRANDED");
        assert_eq!(cells[0][7], "veth0(device,down)");
        assert_eq!(cells[0][3], "~1.5s", "a scheduler estimate is marked");
        let mut probed = row();
        probed.blocked_since_source = crate::model::receiver::BlockedSince::RecvProbe;
        assert_eq!(blocked_cell(&probed), "1.5s");
        assert!(ready_line(None).len() <= 120);
        let json = serde_json::to_value(row()).unwrap_or_default();
        assert_eq!(json["certainty"], "current_fd");
        assert_eq!(json["netns"], 7);
        assert_eq!((json["source"].as_str(), json["blocked_since_source"].as_str()), (Some("proc"), Some("scheduler")));
    }

    #[test]
    fn event_loops_get_their_own_table_and_json_type() {
        use crate::model::{
            socket::Protocol,
            stranded::{StrandReason, Stranded, Via, Waiter},
        };
        let row = EventLoopWaiter {
            waiter: Waiter { pid: 812, tid: 813, comm: "unbound".into(), syscall: "epoll_wait", via: Via::Epoll, fd: Some(3), epfd: Some(5), fds: None, reason: None, source: crate::model::stranded::WaiterSource::Proc },
            inode: SockInode(99),
            netns: NetnsIno(7),
            protocol: Protocol::Udp,
            local_addr: "10.78.0.1".parse().unwrap(),
            local_port: 53,
            stranded: Stranded { reason: StrandReason::AddressGone, ifindex: None, ifname: None, now_ifindex: None, address: Some("10.78.0.1".parse().unwrap()), since_unix_ns: None },
        };
        let (header, cells) = loop_cells(std::slice::from_ref(&row), None);
        assert_eq!(header, vec!["PID/TID", "COMM", "VIA", "FD/EPFD", "SOCKET", "STATUS"]);
        assert_eq!(cells[0], vec!["812/813", "unbound", "epoll:epoll_wait", "fd 3 @epfd 5", "udp 10.78.0.1:53 inode 99", "address_gone"]);
        let v = serde_json::to_value(EventLoopLine { ty: "event_loop", row: &row }).unwrap();
        assert_eq!((v["type"].as_str(), v["via"].as_str(), v["epfd"].as_u64()), (Some("event_loop"), Some("epoll"), Some(5)));
        assert_eq!((v["protocol"].as_str(), v["stranded"]["reason"].as_str()), (Some("udp"), Some("address_gone")));
        let snap = serde_json::to_value(Snapshot { ty: "snapshot", ts_unix_ns: 1, receivers: &[], event_loops: std::slice::from_ref(&row) }).unwrap();
        assert_eq!(snap["event_loops"][0]["tid"], 813);
        assert!(snap["receivers"].as_array().is_some_and(|r| r.is_empty()));
    }

    #[test]
    fn all_netns_adds_a_netns_column_with_names() {
        let mut names = HashMap::new();
        names.insert(NetnsIno(7), "blue".to_string());
        let mut other = row();
        other.netns = NetnsIno(8);
        let (header, cells) = cells(&[row(), other], Some(&names));
        assert_eq!(header[0], "NETNS");
        assert_eq!((cells[0][0].as_str(), cells[1][0].as_str()), ("blue", "8"));
    }
}
