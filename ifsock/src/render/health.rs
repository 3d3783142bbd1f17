//! Human text for socket health: the WAITERS cell of `sockets` and the one-line form of watch's
//! `socket_stranded` / `socket_recovered` records (JSON comes from the typed structs as they are).
use crate::model::{
    ids::{IfIndex, NetnsIno},
    stranded::{SocketHealthEvent, SocketReport, StrandReason, Waiter},
};

/// A deleted ifindex as a person reads it: `uxv0 (deleted ifindex 3; uxv0 is now ifindex 4)`,
/// `uxv0 (deleted ifindex 3)` when no interface has that name now, `deleted ifindex 3` when the
/// name is unknown (no journal or watcher saw the deletion).
pub fn deleted_iface(ifindex: IfIndex, name: Option<&str>, now: Option<IfIndex>) -> String {
    match (name, now) {
        (Some(n), Some(now)) => format!("{n} (deleted ifindex {ifindex}; {n} is now ifindex {now})"),
        (Some(n), None) => format!("{n} (deleted ifindex {ifindex})"),
        (None, _) => format!("deleted ifindex {ifindex}"),
    }
}

/// The STATUS cell of a `sockets` row: `ok`, the strand reason, and for `device_deleted` the
/// deleted interface ([`deleted_iface`]).
pub fn status(r: &SocketReport) -> String {
    match &r.stranded {
        Some(st) if st.reason == StrandReason::DeviceDeleted => match st.ifindex {
            Some(i) => format!("device_deleted: {}", deleted_iface(i, st.ifname.as_deref(), st.now_ifindex)),
            None => r.status().to_string(),
        },
        _ => r.status().to_string(),
    }
}

/// The note `sockets --ifindex N` prints on stderr for a deleted N.
pub fn deleted_ifindex_note(ifindex: IfIndex, netns: NetnsIno, last_name: Option<&str>) -> String {
    let last = last_name.map_or_else(String::new, |n| format!(" (last named {n}, from the journal)"));
    format!("note: ifindex {ifindex} is not an interface of netns {netns} now: it was deleted{last}; listing the sockets still bound to it")
}

/// `comm[pid]/tid via:syscall/fdN` per waiter, comma-separated (`epfd` appended for epoll,
/// `fd?` when unknown, the reason in parentheses when uncertain); `-` when there are none.
pub fn waiters(waiters: &[Waiter]) -> String {
    if waiters.is_empty() {
        return "-".into();
    }
    waiters
        .iter()
        .map(|w| {
            let fd = w.fd.map_or_else(|| "?".to_string(), |f| f.to_string());
            let epfd = w.epfd.map(|e| format!("@epfd{e}")).unwrap_or_default();
            let why = w.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            format!("{}[{}]/{} {}:{}/fd{fd}{epfd}{why}", w.comm, w.pid, w.tid, w.via.name(), w.syscall)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One line for a `socket_stranded` (`recovered: false`) or `socket_recovered` record:
/// `socket_stranded address_gone udp 10.78.0.1:53 ifindex 5 (veth0) unbound[812]/fd3 waiters: …`.
pub fn health_line(e: &SocketHealthEvent, recovered: bool) -> String {
    let s = &e.socket.tied.socket;
    let kind = if recovered { "socket_recovered" } else { "socket_stranded" };
    let iface = match (e.ifindex, &e.ifname) {
        (Some(i), n) if e.reason == StrandReason::DeviceDeleted => format!(" {}", deleted_iface(i, n.as_deref(), e.now_ifindex)),
        (Some(i), Some(n)) => format!(" ifindex {i} ({n})"),
        (Some(i), None) => format!(" ifindex {i}"),
        _ => String::new(),
    };
    let local = crate::render::fmt::local(s);
    let proto = crate::render::fmt::protocol(s.protocol);
    let cause = e.cause.as_ref().map(|c| format!(" after {c}")).unwrap_or_default();
    let verdict = e.verdict.as_ref().filter(|_| !recovered).map(|v| format!("; {v}")).unwrap_or_default();
    format!(
        "{kind} {} {proto} {local}{iface}{cause} {} waiters: {}{verdict}",
        e.reason.name(),
        crate::render::fmt::owners(&s.owners, "no owner"),
        waiters(&e.waiters)
    )
}

/// One line for a `socket_still_stranded` record: the verdict after the change that did not
/// cure the socket, `socket_still_stranded after recreated: python3[15300]/fd3 is still bound
/// to deleted ifindex 3 (uxv0; uxv0 is now ifindex 4): restart it, or `ifsock abort --inode N``.
pub fn still_line(e: &SocketHealthEvent) -> String {
    let cause = e.cause.as_ref().map(|c| format!(" after {c}")).unwrap_or_default();
    let s = &e.socket.tied.socket;
    let verdict = e.verdict.clone().unwrap_or_else(|| e.reason.name().to_string());
    format!("socket_still_stranded{cause}: {verdict} ({} {})", crate::render::fmt::protocol(s.protocol), crate::render::fmt::local(s))
}

#[cfg(test)]
mod tests {
    use ifsock_common::SockRecord;

    use super::*;
    use crate::model::{
        socket::{Owner, Socket},
        stranded::{SocketReport, StrandReason, Stranded, Via},
        tie,
    };

    #[test]
    fn stranded_line_names_reason_socket_interface_owner_and_waiters() {
        let mut s = Socket::from_record(&SockRecord {
            sk: 1, cookie: 1, ino: 9, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 17, state: 7, lport: 53,
            rport: 0, flags: 0, laddr: [10, 78, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], raddr: [0; 16], rx_queue: 0, drops: 0,
        });
        s.owners = vec![Owner { pid: 812, comm: "unbound".into(), fd: 3 }];
        let tied = tie::each_once(&[s], NetnsIno(7), &[]).remove(0);
        let w = Waiter { pid: 812, tid: 812, comm: "unbound".into(), syscall: "epoll_wait", via: Via::Epoll, fd: Some(3), epfd: Some(5), fds: None, reason: None, source: crate::model::stranded::WaiterSource::Proc };
        let by = Stranded { reason: StrandReason::AddressGone, ifindex: Some(IfIndex(5)), ifname: Some("veth0".into()), now_ifindex: None, address: None, since_unix_ns: Some(1) };
        let report = SocketReport { tied, stranded: Some(by.clone()), waiters: vec![w] };
        let e = SocketHealthEvent::new(&by, report, 1, None, Some("deleted".into()));
        let line = health_line(&e, false);
        assert!(line.starts_with("socket_stranded address_gone udp 10.78.0.1:53 ifindex 5 (veth0) after deleted unbound[812]/fd3"), "{line}");
        assert!(line.ends_with("waiters: unbound[812]/812 epoll:epoll_wait/fd3@epfd5"), "{line}");
        assert!(health_line(&e, true).starts_with("socket_recovered address_gone"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["socket"]["stranded"]["reason"], "address_gone");
        assert_eq!(v["waiters"][0]["via"], "epoll");
        assert_eq!(v["netns"], 7);
        assert_eq!(waiters(&[]), "-");
    }

    #[test]
    fn a_deleted_ifindex_is_named_with_where_the_name_went() {
        assert_eq!(deleted_iface(IfIndex(3), Some("uxv0"), Some(IfIndex(4))), "uxv0 (deleted ifindex 3; uxv0 is now ifindex 4)");
        assert_eq!(deleted_iface(IfIndex(3), Some("uxv0"), None), "uxv0 (deleted ifindex 3)");
        assert_eq!(deleted_iface(IfIndex(3), None, None), "deleted ifindex 3");
        let s = Socket::from_record(&SockRecord {
            sk: 1, cookie: 1, ino: 9, netns: 7, uid: 0, bound_dev_if: 3, family: 2, protocol: 17, state: 7, lport: 53,
            rport: 0, flags: 0, laddr: [0; 16], raddr: [0; 16], rx_queue: 0, drops: 0,
        });
        let tied = tie::each_once(&[s], NetnsIno(7), &[]).remove(0);
        let by = Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(IfIndex(3)), ifname: Some("uxv0".into()), now_ifindex: Some(IfIndex(4)), address: None, since_unix_ns: None };
        let report = SocketReport { tied, stranded: Some(by.clone()), waiters: vec![] };
        assert_eq!(status(&report), "device_deleted: uxv0 (deleted ifindex 3; uxv0 is now ifindex 4)");
        let e = SocketHealthEvent::new(&by, report, 1, None, None);
        assert!(health_line(&e, false).starts_with("socket_stranded device_deleted udp 0.0.0.0:53 uxv0 (deleted ifindex 3; uxv0 is now ifindex 4) "), "{}", health_line(&e, false));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!((v["now_ifindex"].as_u64(), v["socket"]["stranded"]["now_ifindex"].as_u64()), (Some(4), Some(4)), "{v}");
    }
}
