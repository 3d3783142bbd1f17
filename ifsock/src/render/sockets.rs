//! The `sockets` table (its JSON is [`crate::model::stranded::SocketReport`] as serde writes it).
use anyhow::Result;

use super::fmt;
use crate::model::{stranded::SocketReport, tie::TiedSocket};

/// Prints socket reports as a table: the socket columns ([`HEADER`]), then STATUS (`ok` or the
/// strand reason) and WAITERS (`comm[pid]/tid via fd`, `-` when none).
///
/// # Errors
/// Writing to stdout failed (see [`super::out`]).
pub fn table(rows: &[SocketReport]) -> Result<()> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = cells(&r.tied);
            c.push(super::health::status(r));
            c.push(super::health::waiters(&r.waiters));
            c
        })
        .collect();
    let mut header = HEADER.to_vec();
    header.extend(["STATUS", "WAITERS"]);
    super::table(&header, &cells)
}

/// The socket columns of the `sockets` table.
pub const HEADER: [&str; 11] = ["NETNS", "IFINDEX", "IFACE", "BINDING", "PROTO", "LOCAL", "REMOTE", "STATE", "INODE", "PKTINFO", "OWNERS"];

/// The socket columns of one tied socket.
pub fn cells(r: &TiedSocket) -> Vec<String> {
    let s = &r.socket;
    let owners = fmt::owners(&s.owners, "-");
    vec![
        s.netns.to_string(),
        r.ifindex.map_or("-".into(), |i| i.to_string()),
        r.ifname.clone().unwrap_or_else(|| "-".into()),
        fmt::binding(r.binding).to_string(),
        fmt::proto_family(s),
        fmt::local(s),
        fmt::endpoint(&s.remote_addr, s.v4_mapped, s.remote_port),
        s.state.to_string(),
        s.inode.to_string(),
        if s.pktinfo { "yes".into() } else { "no".into() },
        owners,
    ]
}
