//! Human text for socket health: the WAITERS cell of `sockets` and the one-line form of watch's
//! `socket_stranded` / `socket_recovered` records (JSON comes from the typed structs as they are).
use crate::model::stranded::{SocketHealthEvent, Waiter};

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
        (Some(i), Some(n)) => format!(" ifindex {i} ({n})"),
        (Some(i), None) => format!(" ifindex {i}"),
        _ => String::new(),
    };
    let local = crate::render::fmt::local(s);
    let proto = crate::render::fmt::protocol(s.protocol);
    let cause = e.cause.as_ref().map(|c| format!(" after {c}")).unwrap_or_default();
    format!(
        "{kind} {} {proto} {local}{iface}{cause} {} waiters: {}",
        e.reason.name(),
        crate::render::fmt::owners(&s.owners, "no owner"),
        waiters(&e.waiters)
    )
}

#[cfg(test)]
mod tests {
    use ifsock_common::SockRecord;

    use super::*;
    use crate::model::{
        ids::{IfIndex, NetnsIno},
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
        let by = Stranded { reason: StrandReason::AddressGone, ifindex: Some(IfIndex(5)), ifname: Some("veth0".into()), address: None, since_unix_ns: Some(1) };
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
}
