//! `journal`: the agent's records as human lines, or as the JSON lines it stored.
use anyhow::Result;

use crate::journal::Entry;

/// One record as a human line: time, type, netns, and what happened to which interface.
pub fn human(e: &Entry) -> String {
    let h = &e.header;
    let ns = match (&h.netns, &h.netns_name) {
        (Some(i), Some(n)) => format!("{i}({n})"),
        (Some(i), None) => i.to_string(),
        (None, _) => "-".into(),
    };
    let iface = |name: &Option<String>| match (h.ifindex, name.as_deref()) {
        (Some(i), Some(n)) if !n.is_empty() => format!(" {i}:{n}"),
        (Some(i), _) => format!(" {i}"),
        (None, Some(n)) if !n.is_empty() => format!(" {n}"),
        _ => String::new(),
    };
    let addr = h.address.map(|a| format!(" {a}")).unwrap_or_default();
    let was = h.old_ifindex.map(|i| format!(" (was ifindex {i})")).unwrap_or_default();
    // The socket: protocol, local address and port, and who holds it.
    let socket = h.socket.as_ref().map_or_else(String::new, |s| {
        let local = match (s.local_addr, s.local_port) {
            (Some(std::net::IpAddr::V6(a)), Some(p)) => format!(" [{a}]:{p}"),
            (Some(a), Some(p)) => format!(" {a}:{p}"),
            (None, Some(p)) => format!(" port {p}"),
            _ => String::new(),
        };
        let owners: Vec<String> = s.owners.iter().map(|o| format!("{}[{}]/fd{}", o.comm, o.pid, o.fd)).collect();
        let owners = if owners.is_empty() { " no owner".to_string() } else { format!(" {}", owners.join(",")) };
        format!(" {}{local}{owners}", s.protocol.as_deref().unwrap_or("?"))
    });
    let detail = match h.ty.as_str() {
        "change" => format!("{}{}{was}{addr}", h.event.as_deref().unwrap_or("?"), iface(&h.name)),
        "socket_stranded" | "socket_recovered" => format!("{}{}{addr}{socket}", h.reason.as_deref().unwrap_or("?"), iface(&h.ifname)),
        "socket_still_stranded" => h.verdict.clone().unwrap_or_else(|| format!("{}{}{addr}{socket}", h.reason.as_deref().unwrap_or("?"), iface(&h.ifname))),
        _ => iface(&h.name).trim_start().to_string(),
    };
    format!("{} {:<17} netns {ns} {detail}", super::date_time(h.ts_unix_ns), h.ty).trim_end().to_string()
}

/// Prints one record: the stored JSON line as it is with `json`, else [`human`].
///
/// # Errors
/// Stdout closed ([`super::StdoutClosed`]).
pub fn entry(e: &Entry, json: bool) -> Result<()> {
    if json {
        super::json_text_line(&e.line)
    } else {
        super::line(&human(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_of(v: serde_json::Value) -> Entry {
        Entry { header: serde_json::from_value(v.clone()).unwrap(), line: v.to_string() }
    }

    #[test]
    fn socket_lines_name_process_and_port_and_recreates_the_old_ifindex() {
        let e = entry_of(serde_json::json!({"type": "socket_stranded", "ts_unix_ns": 1, "netns": 7, "reason": "device_deleted", "ifindex": 3, "ifname": "uxv0",
            "socket": {"protocol": "udp", "local_addr": "0.0.0.0", "local_port": 5300, "owners": [{"pid": 15300, "comm": "python3", "fd": 3}]}}));
        assert!(human(&e).ends_with("netns 7 device_deleted 3:uxv0 udp 0.0.0.0:5300 python3[15300]/fd3"), "{}", human(&e));
        let e = entry_of(serde_json::json!({"type": "change", "ts_unix_ns": 1, "netns": 7, "event": "recreated", "ifindex": 4, "name": "uxv0", "old_ifindex": 3}));
        assert!(human(&e).ends_with("recreated 4:uxv0 (was ifindex 3)"), "{}", human(&e));
        let e = entry_of(serde_json::json!({"type": "socket_still_stranded", "ts_unix_ns": 1, "netns": 7, "reason": "device_deleted", "verdict": "python3[15300]/fd3 is still bound to deleted ifindex 3: restart it"}));
        assert!(human(&e).ends_with("python3[15300]/fd3 is still bound to deleted ifindex 3: restart it"), "{}", human(&e));
    }
}
