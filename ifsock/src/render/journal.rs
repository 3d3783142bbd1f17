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
    let detail = match h.ty.as_str() {
        "change" => format!("{}{}{addr}", h.event.as_deref().unwrap_or("?"), iface(&h.name)),
        "socket_stranded" | "socket_recovered" => format!("{}{}{addr}", h.reason.as_deref().unwrap_or("?"), iface(&h.ifname)),
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
