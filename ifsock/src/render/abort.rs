//! `abort` report: one line per socket, one per waiter (human), or one JSON object.
use anyhow::Result;

use super::{fmt, json_line, line};
use crate::engine::abort::{AbortReport, SocketReport, WaiterReport};

/// The confirmation prompt's text (without the question): the sockets that will be destroyed.
pub fn confirm_prompt(targets: &[crate::engine::abort::Target]) -> Vec<String> {
    let mut lines = vec![format!("about to destroy {} socket(s); each gets ECONNABORTED (TCP peers get a RST):", targets.len())];
    for t in targets {
        let s = &t.socket;
        lines.push(format!("  {} {} inode {} netns {} owners {}", fmt::protocol(s.protocol), fmt::local(s), s.inode, s.netns, fmt::owners(&s.owners, "-")));
    }
    lines
}

/// What destroy does, for `abort --help` (README says the same at length).
pub const ABOUT_DESTROY: &str = "\
What destroy does: the kernel calls the protocol's diag_destroy with ECONNABORTED.
  UDP (udp_abort): the socket's error becomes ECONNABORTED, a thread blocked in recvmsg/recvfrom
  returns -1 ECONNABORTED once, and __udp_disconnect() clears the connected address and
  sk_bound_dev_if. A socket explicitly bound to its port stays bound to that port, now without
  its device binding: the application owns a changed socket afterwards.
  TCP (tcp_abort): established connections send a RST to the peer; the socket is closed with
  ECONNABORTED. A TCP LISTEN socket is destroyed only when named by --inode.

Mechanisms, in order: bpf_sock_destroy() from an iter/udp or iter/tcp program that re-checks each
socket's cookie (Linux >= 6.5), then SOCK_DESTROY over NETLINK_SOCK_DIAG with the exact tuple,
the socket's bound device and its cookie (CONFIG_INET_DIAG_DESTROY). A socket that went away
before the destroy is reported `gone`. Sockets of another netns are only reached with --netns
or --all-netns (each is destroyed inside its own netns).

Waiters: a thread blocked in recvmsg/recvfrom returns -1 ECONNABORTED. A thread in
epoll_wait/poll/select on the socket wakes with the socket readable (EPOLLIN|EPOLLERR): its
syscall returns a positive count, and the application's next recvmsg on it returns
ECONNABORTED. The report gives each waiter's woke_ms and the syscall's own return value.

Examples:
  ifsock -n svc abort --inode 48213 --dry-run
  ifsock -n svc abort --inode 48213 --yes --json
  ifsock abort --stranded --iface wg0 --pid 812
  ifsock abort --all-netns --stranded --dry-run";

/// `destroyed udp 0.0.0.0:5000 -> *:* inode 123 cookie 77 via sock_diag owners - stranded device_down(x)`.
pub fn socket_line(s: &SocketReport) -> String {
    let via = s.via.map(|v| format!(" via {}", v.name())).unwrap_or_default();
    let stranded = match &s.stranded {
        None => String::new(),
        Some(st) => {
            let at = match (&st.ifname, st.ifindex, st.address) {
                (n, Some(i), _) if st.reason == crate::model::stranded::StrandReason::DeviceDeleted => {
                    format!("({})", super::health::deleted_iface(i, n.as_deref(), st.now_ifindex))
                }
                (Some(n), Some(i), _) => format!("({n}, ifindex {i})"),
                (None, Some(i), _) => format!("(ifindex {i}, deleted)"),
                (_, _, Some(a)) => format!("({a} on no interface)"),
                _ => String::new(),
            };
            format!(" stranded {}{at}", st.reason.name())
        }
    };
    let cookie = s.cookie.map_or("?".to_string(), |c| c.to_string());
    let error = s.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
    format!(
        "{:<13} {} {} {} -> {} inode {} cookie {cookie}{via} owners {}{stranded} [by {}]{error}",
        s.result,
        fmt::protocol(s.protocol),
        s.state,
        s.local,
        s.remote,
        s.inode,
        fmt::owners(&s.owners, "-"),
        s.selected_by.join("+"),
    )
}

/// `  waiter rx[100] tid 200 recvmsg(fd 3, inferred): woke after 0.4 ms, ret -103 (ECONNABORTED)`.
pub fn waiter_line(w: &WaiterReport, dry_run: bool, observe_ms: u64) -> String {
    let head = format!(
        "  waiter {}[{}] tid {} {}(fd {}{}, {}, via {})",
        w.waiter.comm,
        w.waiter.pid,
        w.waiter.tid,
        w.waiter.syscall,
        w.waiter.fd,
        w.waiter.epfd.map(|e| format!(" in epfd {e}")).unwrap_or_default(),
        w.waiter.certainty,
        w.waiter.via
    );
    let what = match (w.woke, w.woke_ms, w.ret) {
        _ if dry_run => "still blocked (dry run)".to_string(),
        (true, Some(ms), Some(ret)) => {
            let errno = w.errno.map(|e| format!(" ({})", crate::model::sys::errno_name(e))).unwrap_or_default();
            format!("woke after {ms:.1} ms, ret {ret}{errno}")
        }
        _ if w.observed_by == "none" => "not observed".to_string(),
        _ => format!("did not return within {observe_ms} ms"),
    };
    format!("{head}: {what}")
}

/// Prints the report.
///
/// # Errors
/// [`super::StdoutClosed`] when the reader went away.
pub fn print(r: &AbortReport, json: bool) -> Result<()> {
    if json {
        return json_line(r);
    }
    let via = r.via.map_or("none", |v| v.name());
    let head = if r.dry_run { format!("dry run: would destroy {} socket(s) in netns {} via {via}", r.sockets.len(), r.netns) } else {
        format!("abort in netns {} via {via}: {} destroyed, {} gone, {} failed", r.netns, r.destroyed, r.gone, r.failed)
    };
    line(&head)?;
    for why in &r.refused {
        line(&format!("  (not used: {why})"))?;
    }
    for s in &r.sockets {
        line(&socket_line(s))?;
        for w in &s.waiters {
            line(&waiter_line(w, r.dry_run, r.observe_ms))?;
        }
    }
    for k in &r.skipped {
        line(&format!("kept          inode {}: {}", k.inode, k.why))?;
    }
    if let Some(stop) = r.interrupted {
        line(&format!("interrupted by {} during the observation window: the report above is partial; the sockets marked destroyed were destroyed", stop.name()))?;
    }
    Ok(())
}
