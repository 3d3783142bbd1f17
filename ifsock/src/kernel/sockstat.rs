//! How many TCP and UDP sockets a netns has hashed, from `/proc/thread-self/net/sockstat` and
//! `sockstat6`: a snapshot skips the walk of a table that holds none of the netns's sockets.
//!
//! Kernel facts (`net/ipv4/proc.c` `sockstat_seq_show()`, `net/ipv6/proc.c`
//! `sockstat6_seq_show()`, Linux >= 4.12 for per-netns counts):
//! - `TCP: inuse N` / `TCP6: inuse N` is `sock_prot_inuse_get(net, &tcp_prot)` /
//!   `&tcpv6_prot`: sockets in the netns hashed in the listening or established table
//!   (`__inet_hash()`, `inet_ehash_nolisten()` add one, `inet_unhash()` takes it away). These
//!   are the sockets `iter/tcp` visits, except TIME_WAIT and NEW_SYN_RECV mini sockets;
//! - `tw N` is `net->ipv4.tcp_death_row.tw_refcount - 1`: the netns's TIME_WAIT sockets (v4 and
//!   v6). A NEW_SYN_RECV request belongs to a listener the netns counts;
//! - `UDP: inuse N` / `UDP6: inuse N`: sockets hashed by `udp_lib_get_port()` (every socket
//!   `iter/udp` visits; UDP-Lite has its own table and is not walked).
//!
//! The counts are per-CPU sums read without a lock: a socket hashed and unhashed on two CPUs
//! while the sum is read can make it one low for that instant. A walk that starts a moment
//! later sees the table as it is then, so this only skips a walk when both counts say the
//! table holds nothing of this netns.
use std::{fs, io};

/// A netns's hashed socket counts (v4 plus v6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InUse {
    /// `TCP: inuse` + `tw` + `TCP6: inuse`: sockets `iter/tcp` would list.
    pub tcp: u64,
    /// `UDP: inuse` + `UDP6: inuse`: sockets `iter/udp` would list.
    pub udp: u64,
}

/// The counts of the calling thread's netns (`/proc/thread-self/net`, not `/proc/self/net`:
/// a thread that entered another netns with `setns()` reads its own).
///
/// # Errors
/// `sockstat` is unreadable or does not parse (`InvalidData`). A missing `sockstat6` (IPv6
/// disabled at boot) counts as no IPv6 sockets.
pub fn here() -> io::Result<InUse> {
    let v4 = fs::read_to_string("/proc/thread-self/net/sockstat")?;
    let v6 = match fs::read_to_string("/proc/thread-self/net/sockstat6") {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    parse(&v4, &v6).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "sockstat: no TCP/UDP inuse lines"))
}

/// The counts in the text of `sockstat` and `sockstat6` (`None`: `sockstat` lacks its `TCP:`
/// or `UDP:` line, or a count is not a number).
pub fn parse(sockstat: &str, sockstat6: &str) -> Option<InUse> {
    let field = |text: &str, line: &str, name: &str| -> Option<Option<u64>> {
        let Some(rest) = text.lines().find_map(|l| l.strip_prefix(line)) else { return Some(None) };
        let mut words = rest.split_whitespace();
        while let Some(w) = words.next() {
            if w == name {
                return words.next()?.parse().ok().map(Some);
            }
        }
        None
    };
    let tcp = field(sockstat, "TCP:", "inuse")??;
    let tw = field(sockstat, "TCP:", "tw")?.unwrap_or(0);
    let udp = field(sockstat, "UDP:", "inuse")??;
    let tcp6 = field(sockstat6, "TCP6:", "inuse")?.unwrap_or(0);
    let udp6 = field(sockstat6, "UDP6:", "inuse")?.unwrap_or(0);
    Some(InUse { tcp: tcp + tw + tcp6, udp: udp + udp6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "sockets: used 8\nTCP: inuse 1 orphan 0 tw 2 alloc 1 mem 458\nUDP: inuse 3 mem 0\nUDPLITE: inuse 5\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
    const V6: &str = "TCP6: inuse 4\nUDP6: inuse 6\nUDPLITE6: inuse 7\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";

    #[test]
    fn v4_v6_and_time_wait_are_summed_and_udplite_is_not() {
        assert_eq!(parse(V4, V6), Some(InUse { tcp: 1 + 2 + 4, udp: 3 + 6 }));
    }

    #[test]
    fn no_sockstat6_means_no_ipv6_sockets() {
        assert_eq!(parse(V4, ""), Some(InUse { tcp: 3, udp: 3 }));
    }

    #[test]
    fn an_empty_netns_counts_zero() {
        let v4 = "sockets: used 0\nTCP: inuse 0 orphan 0 tw 0 alloc 0 mem 0\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse(v4, "TCP6: inuse 0\nUDP6: inuse 0\n"), Some(InUse { tcp: 0, udp: 0 }));
    }

    #[test]
    fn a_missing_or_garbled_line_is_no_answer() {
        assert_eq!(parse("TCP: inuse 1 orphan 0 tw 0\n", V6), None, "no UDP line");
        assert_eq!(parse("TCP: inuse x\nUDP: inuse 1\n", V6), None, "not a number");
        assert_eq!(parse("TCP: inuse\nUDP: inuse 1\n", V6), None, "no value");
    }
}
