//! The teardown report: human text and one JSON object (the typed [`TeardownReport`]).
use std::fmt::Write as _;

use anyhow::Result;

pub use crate::render::json_line;

use crate::{
    engine::teardown::{Companion, LeftState, Plan, Relation, SocketSeen, TeardownReport},
    model::{socket::Binding, tie::TiedSocket, tun::QueueState},
    render::{
        fmt::{self, binding, owners},
        line,
    },
};

/// `udp4 device 0.0.0.0:5000 inode 95720 pktinfo python3[12382]/fd3`.
pub fn socket_line(t: &TiedSocket) -> String {
    let s = &t.socket;
    format!(
        "{} {} {} inode {}{} {}",
        fmt::proto_family(s),
        binding(t.binding),
        fmt::local(s),
        s.inode,
        if s.pktinfo { " pktinfo" } else { "" },
        owners(&s.owners, "no owner")
    )
}

fn fmt_ms(ms: f64) -> String {
    if ms < 0.0 {
        format!("{ms:.1}ms (before down)")
    } else {
        format!("+{ms:.1}ms")
    }
}

/// What the target was left in: `veth0 left down, not deleted; restore: …; finish: …`.
pub fn left(r: &TeardownReport) -> String {
    let mut text = match r.state_left {
        LeftState::Untouched => format!("{} left untouched ({})", r.ifname, if r.was_up { "up" } else { "down" }),
        LeftState::Down => format!("{} left down, not deleted", r.ifname),
        LeftState::Deleted => format!("{} deleted", r.ifname),
        LeftState::Gone => format!("{} gone (deleted by someone else)", r.ifname),
    };
    if let Some(c) = &r.restore {
        let _ = write!(text, "; restore: {c}");
    }
    if let Some(c) = &r.finish {
        let _ = write!(text, "; finish: {c}");
    }
    text
}

/// The sentence ending a teardown that did not finish as asked (interrupted or failed):
/// `interrupted by SIGINT: veth0 left down, not deleted; restore: …`. `None` otherwise.
pub fn state_line(r: &TeardownReport) -> Option<String> {
    let lead = if r.interrupted {
        format!("interrupted by {}", r.signal.map_or("a signal", |s| s.name()))
    } else if r.error.is_some() {
        "failed".to_string()
    } else {
        return None;
    };
    Some(format!("{lead}: {}", left(r)))
}

fn push_socket(text: &mut Vec<String>, s: &SocketSeen, r: &TeardownReport, indent: &str) {
    text.push(format!("{indent}{}{}", socket_line(&s.tied), if s.closed { " — closed by its owner(s) during grace" } else { "" }));
    for e in &s.send_errors {
        text.push(format!("{indent}  {}[{}] tid {} fd {}: send failed {} ×{}, first {}, last {}",
            e.comm, e.pid, e.tid, e.fd, e.error, e.count, fmt_ms(e.first_ms), fmt_ms(e.last_ms)
        ));
    }
    for e in &s.socket_errors {
        text.push(format!("{indent}  kernel reported {} ×{} (sk_err, remote {}), first {}, last {}",
            e.error, e.count, e.remote, fmt_ms(e.first_ms), fmt_ms(e.last_ms)
        ));
    }
    for rc in &s.receivers {
        let fate = match (rc.woke_ms, rc.blocked_at_end) {
            _ if r.dry_run => "blocked in it now".to_string(),
            (Some(w), again) => format!(
                "woke {} with {}{}",
                fmt_ms(w),
                rc.error.clone().unwrap_or_else(|| format!("{} bytes", rc.ret.unwrap_or(0))),
                if again { ", blocked again at end" } else { "" }
            ),
            (None, true) => format!("still blocked after {}ms: nothing woke it", r.grace_ms),
            (None, false) => "returned during grace (entered before ifsock attached: time not traced)".to_string(),
        };
        let when = if r.dry_run {
            ""
        } else if rc.blocked_at_down {
            " blocked at down"
        } else {
            " entered after down"
        };
        let fd = rc.fd.map_or("?".into(), |f| f.to_string());
        text.push(format!("{indent}  {}[{}] tid {} fd {fd}: {}{when} — {fate}", rc.comm, rc.pid, rc.tid, rc.syscall));
    }
    for w in &s.waiters {
        let fd = w.fd.map_or("?".into(), |f| f.to_string());
        text.push(format!("{indent}  {}[{}] tid {} fd {fd}: waiting in {} ({}) at the end of grace — nothing woke it", w.comm, w.pid, w.tid, w.syscall, w.via.name()));
    }
    if !r.dry_run && s.send_errors.is_empty() && s.socket_errors.is_empty() && s.receivers.is_empty() && s.waiters.is_empty() && !s.closed {
        text.push(format!("{indent}  nothing observed: no failed send, no receiver or waiter, not closed"));
    }
}

fn push_companion(text: &mut Vec<String>, c: &Companion, r: &TeardownReport) {
    let done = r.state_left == LeftState::Deleted;
    let what = match (c.relation, done) {
        (Relation::VethPeer, false) => "veth peer, would be deleted with it",
        (Relation::VethPeer, true) => "veth peer, deleted with it",
        (Relation::BridgePort, false) => "bridge port, would be released (not deleted)",
        (Relation::BridgePort, true) => "bridge port, released (not deleted)",
        (Relation::Master, false) => "its bridge (master), would lose this port",
        (Relation::Master, true) => "its bridge (master), lost this port",
    };
    let netns = match &c.netns_name {
        Some(n) => format!("netns {n} ({})", c.netns),
        None => format!("netns {}", c.netns),
    };
    let gone = match c.gone {
        Some(true) => "; gone now",
        Some(false) => "; still exists",
        None => "",
    };
    text.push(format!("  also {} (ifindex {}, kind {}, {netns}): {what}{gone}; {} socket(s) tied to it",
        c.ifname,
        c.ifindex,
        c.kind.as_deref().unwrap_or("-"),
        c.sockets.len()
    ));
    for s in &c.sockets {
        push_socket(text, s, r, "    ");
    }
}

/// `netns blue (4026532000)`, or `netns 4026532000` without a name.
fn netns_label(ino: crate::model::ids::NetnsIno, name: Option<&str>) -> String {
    name.map_or_else(|| format!("netns {ino}"), |n| format!("netns {n} ({ino})"))
}

/// The confirmation prompt's text (without the question): what will be done and to what.
pub fn confirm_prompt(p: &Plan) -> Vec<String> {
    let listed: Vec<_> = p.sockets.iter().filter(|t| t.binding != Some(Binding::Wildcard)).collect();
    let mut text = vec![format!(
        "about to set {} (ifindex {}, {}) down, observe for {}ms, then delete it; {} socket(s) tied to it:",
        p.ifname, p.ifindex, netns_label(p.netns, p.netns_name.as_deref()), p.grace_ms, listed.len()
    )];
    for t in listed {
        text.push(format!("  {}", socket_line(t)));
    }
    for c in &p.companions {
        let netns = c.netns_name.clone().unwrap_or_else(|| c.netns.to_string());
        text.push(format!("  also {}: {} (netns {netns}), {} socket(s)", c.relation.fate(), c.ifname, c.sockets.len()));
    }
    if !p.tun_holders.is_empty() {
        text.push(format!("  {} fd(s) hold it", p.tun_holders.len()));
    }
    text
}

/// The human report, every line ending in `\n` (for tests; [`emit`] writes [`human_lines`]).
pub fn human(r: &TeardownReport) -> String {
    human_lines(r).into_iter().map(|l| l + "\n").collect()
}

/// The human report, one line each: a field's control characters (a newline in a comm too)
/// are escaped by [`super::line`], never taken for a line end.
pub fn human_lines(r: &TeardownReport) -> Vec<String> {
    let mut text = Vec::new();
    let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
    text.push(format!("{}{} (ifindex {}, kind {}, {}): was {}, addresses {}",
        if r.dry_run { "dry run: would tear down " } else { "teardown " },
        r.ifname,
        r.ifindex,
        r.kind.as_deref().unwrap_or("-"),
        netns_label(r.netns, r.netns_name.as_deref()),
        if r.was_up { "up" } else { "down" },
        if addrs.is_empty() { "none".into() } else { addrs.join(", ") }
    ));
    if let Some(d) = &r.down {
        match &d.error {
            None => {
                text.push(format!("  {:<11} set down (acknowledged {})", "+0.0ms", fmt_ms(d.ack_ms)));
            }
            Some(e) => {
                text.push(format!("  {:<11} set down FAILED: {e}", "+0.0ms"));
            }
        }
    }
    if let Some(v) = r.vanished_ms {
        text.push(format!("  {:<11} interface vanished (not deleted by ifsock)", fmt_ms(v)));
    }
    if let Some(d) = &r.delete {
        match &d.error {
            None => {
                text.push(format!("  {:<11} deleted after {}ms grace", fmt_ms(d.at_ms), r.grace_ms));
            }
            Some(e) => {
                text.push(format!("  {:<11} delete FAILED: {e}", fmt_ms(d.at_ms)));
            }
        }
    }
    let verb = if r.dry_run { "would be affected" } else { "tied to it" };
    text.push(format!("{} socket(s) {verb}; {} wildcard socket(s) not listed", r.sockets.len(), r.wildcard_sockets));
    for s in &r.sockets {
        push_socket(&mut text, s, r, "  ");
    }
    for c in &r.companions {
        push_companion(&mut text, c, r);
    }
    if !r.tun_holders.is_empty() {
        let verb = if r.state_left == LeftState::Deleted { "lost it" } else { "would lose it" };
        text.push(format!("  {} fd(s) hold it ({verb}: their reads and writes then fail):", r.tun_holders.len()));
        for f in &r.tun_holders {
            let queue = match (f.queue, f.state) {
                (Some(q), _) => format!("queue {q}"),
                (None, QueueState::Detached) => "detached queue".to_string(),
                (None, QueueState::Attached) => "queue ?".to_string(),
            };
            text.push(format!("    {}[{}]/fd{}: {queue}", f.comm, f.pid, f.fd));
        }
    }
    if let Some(a) = &r.abort {
        let via = a.via.map_or("none", |v| v.name());
        if a.dry_run {
            text.push(format!("--abort-stranded: would destroy {} socket(s) after the delete, via {via}", a.sockets.len()))
        } else {
            text.push(format!("--abort-stranded via {via}: {} destroyed, {} gone, {} failed", a.destroyed, a.gone, a.failed))
        };
        for s in &a.sockets {
            text.push(format!("  {}", super::abort::socket_line(s)));
            for w in &s.waiters {
                text.push(format!("  {}", super::abort::waiter_line(w, a.dry_run, a.observe_ms)));
            }
        }
        for k in &a.skipped {
            text.push(format!("  kept          inode {}: {}", k.inode, k.why));
        }
        if let Some(stop) = a.interrupted {
            text.push(format!("  interrupted by {} during the observation window: the waiters above are partial; the sockets marked destroyed were destroyed", stop.name()));
        }
    }
    for u in &r.unobserved {
        text.push(format!("not observed: {u}"));
    }
    // The last line: the state left and its commands when the teardown did not finish, else
    // the verdict and the next command.
    match state_line(r) {
        Some(l) => text.push(l),
        None => text.push(verdict(r)),
    }
    text
}

/// The last line: what the teardown left behind and the next command.
/// `verdict: 1 socket(s) left bound to veth0 (gone), 2 thread(s) still waiting on them and
/// nothing will wake them; next: `ifsock abort --inode 95720``.
pub fn verdict(r: &TeardownReport) -> String {
    let all: Vec<&SocketSeen> = r.sockets.iter().chain(r.companions.iter().flat_map(|c| c.sockets.iter())).collect();
    let remaining: Vec<&SocketSeen> = all.iter().copied().filter(|s| !s.closed && s.tied.binding != Some(Binding::Wildcard)).collect();
    let waiting: usize = remaining.iter().map(|s| s.receivers.iter().filter(|rc| rc.blocked_at_end || r.dry_run).count() + s.waiters.len()).sum();
    let inodes: Vec<String> = remaining.iter().map(|s| format!("--inode {}", s.tied.socket.inode)).collect();
    let abort_cmd = format!("`ifsock abort {}`", inodes.join(" "));
    if r.interrupted || r.error.is_some() {
        let next = r.restore.as_ref().or(r.finish.as_ref()).map_or_else(|| "see above".to_string(), |c| format!("`{c}`"));
        return format!("verdict: {} did not finish; next: {next}", r.ifname);
    }
    if let Some(a) = &r.abort {
        if !a.dry_run {
            return format!("verdict: {} destroyed, {} gone, {} failed of the stranded sockets; their waiters are listed above; next: {}", a.destroyed, a.gone, a.failed, if a.failed > 0 { "restart the owners of the failed ones" } else { "nothing" });
        }
    }
    if r.dry_run {
        if remaining.is_empty() {
            return format!("verdict: deleting {} would strand no listed socket; next: `ifsock teardown {}`", r.ifname, r.ifname);
        }
        return format!(
            "verdict: deleting {} would strand {} socket(s), {waiting} thread(s) waiting on them; next: `ifsock teardown {} --abort-stranded` (wakes them after the delete), or restart their owners",
            r.ifname,
            remaining.len(),
            r.ifname
        );
    }
    match r.state_left {
        LeftState::Deleted | LeftState::Gone if remaining.is_empty() => format!("verdict: {} is gone and no listed socket was left on it; next: nothing", r.ifname),
        LeftState::Deleted | LeftState::Gone => format!(
            "verdict: {} socket(s) left bound to {} (gone), {waiting} thread(s) still waiting on them and nothing will wake them; next: {abort_cmd}, or restart their owners",
            remaining.len(),
            r.ifname
        ),
        LeftState::Down | LeftState::Untouched => {
            let next = r.finish.as_ref().or(r.restore.as_ref()).map_or_else(|| "nothing".to_string(), |c| format!("`{c}`"));
            let state = if r.state_left == LeftState::Down { "left down, not deleted" } else { "left untouched" };
            format!("verdict: {} {state}; next: {next}", r.ifname)
        }
    }
}

/// The `--json` object of a teardown refused before its target was known (unknown name,
/// loopback, a device without rtnetlink kind, probes that would not load): nothing was changed.
#[derive(serde::Serialize)]
pub struct Refusal {
    #[serde(rename = "type")]
    ty: &'static str,
    ifname: String,
    dry_run: bool,
    interrupted: bool,
    error: String,
    state_left: LeftState,
}

impl Refusal {
    /// A refusal of `ifname` with the error text.
    pub fn new(ifname: &str, dry_run: bool, error: String) -> Self {
        Refusal { ty: "teardown", ifname: ifname.to_string(), dry_run, interrupted: false, error, state_left: LeftState::Untouched }
    }
}

/// Prints the report: one JSON object with `json`, else the human text.
///
/// # Errors
/// [`crate::render::StdoutClosed`] when the reader went away, other write errors.
pub fn emit(r: &TeardownReport, json: bool) -> Result<()> {
    if json {
        json_line(r)
    } else {
        human_lines(r).iter().try_for_each(|l| line(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::teardown::{Plan, StepOutcome, Teardown},
        kernel::signals::Stop,
        model::ids::{IfIndex, NetnsIno},
    };

    fn teardown(netns_name: Option<&str>) -> Teardown {
        Teardown::new(Plan {
            netns: NetnsIno(7),
            netns_name: netns_name.map(String::from),
            ifindex: IfIndex(5),
            ifname: "veth0".into(),
            kind: Some("veth".into()),
            was_up: true,
            addrs: vec![],
            dry_run: false,
            grace_ms: 8000,
            sockets: vec![],
            netns_sockets: vec![],
            companions: vec![],
            tun_holders: vec![],
        })
    }

    #[test]
    fn interrupted_report_ends_with_the_state_left_in_text_and_json() {
        let mut td = teardown(Some("rz1"));
        td.down_sent(1_000_000_000);
        td.down_done(1_000_300_000, StepOutcome::Ok, &[]);
        td.interrupt(Stop::Sigint);
        td.grace_over(&[], None);
        let r = td.report(None);
        let text = human(&r);
        assert!(text.contains("  +0.0ms      set down (acknowledged +0.3ms)\n"), "{text}");
        assert!(text.ends_with("interrupted by SIGINT: veth0 left down, not deleted; restore: ip -n rz1 link set veth0 up; finish: ifsock --netns rz1 teardown veth0 --grace 0 --yes\n"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!((json["interrupted"].as_bool(), json["signal"].as_str(), json["state_left"].as_str()), (Some(true), Some("SIGINT"), Some("down")));
        for field in ["netns", "ifindex", "ifname", "kind", "was_up", "addrs", "dry_run", "grace_ms", "down", "delete", "vanished_ms", "gone", "sockets", "wildcard_sockets", "unobserved", "counters", "abort"] {
            assert!(json.get(field).is_some(), "field {field} of the documented report is missing");
        }
    }

    #[test]
    fn abort_step_interrupted_is_partial_and_ends_the_teardown_with_the_signal() {
        let mut td = teardown(None);
        td.down_sent(0);
        td.down_done(1, StepOutcome::Ok, &[]);
        td.grace_over(&[], None);
        td.delete_done(2, 3, StepOutcome::Ok);
        let mut a = crate::engine::abort::report(NetnsIno(7), false, None, vec![], 500, &[], &[], &[], &Default::default(), 0, vec![]);
        a.interrupted = Some(Stop::Sigterm);
        td.abort_done(a);
        assert_eq!(td.next(), crate::engine::teardown::Next::Report);
        let r = td.report(None);
        assert_eq!((r.signal, r.state_left), (Some(Stop::Sigterm), LeftState::Deleted));
        let text = human(&r);
        assert!(text.contains("--abort-stranded via none: 0 destroyed"), "{text}");
        assert!(text.contains("interrupted by SIGTERM during the observation window"), "{text}");
        assert!(text.ends_with("interrupted by SIGTERM: veth0 deleted\n"), "{text}");
        assert_eq!(serde_json::to_value(&r).unwrap()["abort"]["interrupted"], "SIGTERM");
    }

    #[test]
    fn an_event_loop_waiter_counts_as_waiting_and_the_verdict_names_the_next_command() {
        use crate::model::{link::{Link, IFF_UP}, socket::Socket, stranded::{Via, Waiter}, tie};
        let mut rec = ifsock_common::SockRecord {
            sk: 1, cookie: 1, ino: 95720, netns: 7, uid: 0, bound_dev_if: 5, family: 2, protocol: 17, state: 7, lport: 5000,
            rport: 0, flags: 0, laddr: [0; 16], raddr: [0; 16], rx_queue: 0, drops: 0,
        };
        let links = vec![Link { ifindex: IfIndex(5), name: "veth0".into(), flags: IFF_UP, addrs: Default::default() }];
        let sock = Socket::from_record(&rec);
        rec.ino = 95721;
        let tied = tie::each_once(&[sock.clone(), Socket::from_record(&rec)], NetnsIno(7), &links);
        let mut td = Teardown::new(Plan { sockets: tied, ..teardown(None).plan().clone() });
        td.down_sent(0);
        td.down_done(1, StepOutcome::Ok, &[]);
        td.grace_over(&[], None);
        let w = |via, syscall| Waiter { pid: 4242, tid: 4242, comm: "socat".into(), syscall, via, fd: Some(5), epfd: None, fds: None, reason: None, source: crate::model::stranded::WaiterSource::WaitQueue };
        td.waiters_at_end(&sock, vec![w(Via::Select, "pselect6"), w(Via::Recv, "recvfrom")]);
        td.delete_done(2, 3, StepOutcome::Ok);
        td.after_delete_done();
        let r = td.report(None);
        let text = human(&r);
        assert!(text.contains("  socat[4242] tid 4242 fd 5: waiting in pselect6 (select) at the end of grace — nothing woke it\n"), "{text}");
        assert_eq!(text.matches("nothing observed").count(), 1, "only the socket nobody waits on: {text}");
        assert!(!text.contains("recvfrom"), "receive calls are receivers, not event-loop waiters: {text}");
        assert!(
            text.ends_with("verdict: 2 socket(s) left bound to veth0 (gone), 1 thread(s) still waiting on them and nothing will wake them; next: `ifsock abort --inode 95720 --inode 95721`, or restart their owners\n"),
            "{text}"
        );
        assert_eq!(serde_json::to_value(&r).unwrap()["sockets"][0]["waiters"][0]["via"], "select");
    }

    #[test]
    fn completed_teardown_has_no_state_line_and_refusals_are_one_small_object() {
        let mut td = teardown(None);
        td.down_sent(0);
        td.down_done(1, StepOutcome::Ok, &[]);
        td.grace_over(&[], None);
        td.delete_done(2, 3, StepOutcome::Ok);
        td.after_delete_done();
        let r = td.report(None);
        assert_eq!(state_line(&r), None);
        assert_eq!(left(&r), "veth0 deleted");
        assert!(human(&r).ends_with("verdict: veth0 is gone and no listed socket was left on it; next: nothing\n"), "{}", human(&r));
        let refusal = serde_json::to_string(&Refusal::new("nosuch0", false, "unknown interface".into())).unwrap();
        assert_eq!(refusal, r#"{"type":"teardown","ifname":"nosuch0","dry_run":false,"interrupted":false,"error":"unknown interface","state_left":"untouched"}"#);
    }
}
