//! What deploy/ ships, against the real agent: the Prometheus rules pass `promtool check rules`
//! and their unit tests, name only metrics and labels a live agent exposes, and go pending in a
//! real Prometheus when a receiver blocks on a stranded socket; the journal is 0700 with 0600
//! segments under `umask 0022`, also after rotation and on a directory that existed as 0755.
use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::{ifsock_bin, require_root, unique, BlockedReceiver, Netns};

#[path = "support/agent.rs"]
mod support;
use support::{free_port, get, journal_files, poll, sample, Agent, Prometheus, TempDir};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rules_file() -> PathBuf {
    deploy_dir().join("prometheus/ifsock-rules.yml")
}

/// `promtool` from Debian's `prometheus` package; a missing one fails (never skips).
fn promtool() -> PathBuf {
    let bin = PathBuf::from("/usr/bin/promtool");
    assert!(bin.exists(), "no {} (fix: apt-get install prometheus, as .ci/run does)", bin.display());
    bin
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let check = run_ok(Command::new(promtool()).args(["check", "rules"]).arg(rules_file()))?;
    assert!(check.contains("SUCCESS"), "{check}");
    let test = run_ok(Command::new(promtool()).args(["test", "rules"]).arg(deploy_dir().join("prometheus/ifsock-rules.test.yml")))?;
    assert!(test.contains("SUCCESS") && !test.contains("FAILED"), "{test}");
    Ok(())
}

/// Every agent metric the rules' expressions name (`ifsock_…`, not the `a:b:c` recorded ones),
/// each with the label names its matchers use: `("ifsock_blocked_receivers", ["stranded"])`.
fn metrics_in_rules(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with("expr:")) {
        let mut rest = line;
        while let Some(i) = rest.find("ifsock_") {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
            let name = &tail[..end];
            rest = &tail[end..];
            if name.contains(':') || before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut labels = Vec::new();
            if let Some(m) = rest.strip_prefix('{') {
                let body = &m[..m.find('}').unwrap_or(m.len())];
                for matcher in body.split(',') {
                    let label = matcher.split(['=', '!', '~']).next().unwrap_or("").trim();
                    if !label.is_empty() {
                        labels.push(label.to_string());
                    }
                }
            }
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, l)) => l.extend(labels),
                None => out.push((name.to_string(), labels)),
            }
        }
    }
    out
}

#[test]
fn the_rules_parser_finds_each_metric_and_matcher() {
    let got = metrics_in_rules("  expr: sum by (netns) (ifsock_stranded_sockets{reason!=\"x\"}) + a:ifsock_b:c\n  expr: increase(ifsock_events_lost_total[10m])\n");
    assert_eq!(
        got,
        vec![("ifsock_stranded_sockets".to_string(), vec!["reason".to_string()]), ("ifsock_events_lost_total".to_string(), vec![])]
    );
}

/// A receiver blocked on a UDP socket whose address went with its veth: every metric and label
/// the rules name is in the agent's /metrics, and in a real Prometheus loading the rules the
/// recording rules carry the netns and interface and both stranded alerts go pending.
#[test]
fn rules_name_only_what_a_live_agent_exposes_and_its_alerts_go_pending() -> Result<()> {
    require_root();
    let rules = std::fs::read_to_string(rules_file())?;
    let named = metrics_in_rules(&rules);
    assert!(named.len() >= 4, "rules name too few agent metrics: {named:?}");

    let agent = Agent::start(&[])?;
    let ns = Netns::new()?;
    let (a, b) = (unique("dr"), unique("ds"));
    ns.veth(&a, &b, Some("10.247.0.1/24"))?;
    let receiver = BlockedReceiver::start(&ns, "10.247.0.1:0", false, None)?;
    // Known to the agent on its interface before the deletion, as an operator's socket is.
    let healthy = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}", ns.name);
    assert_eq!(agent.wait_sample(&healthy)?, 1.0);
    ns.ip(&["link", "del", &a])?;
    let blocked = format!("ifsock_blocked_receivers{{netns=\"{}\",stranded=\"true\"}}", ns.name);
    assert!(agent.wait_sample(&blocked)? >= 1.0);
    let stranded = format!("ifsock_stranded_sockets{{netns=\"{}\",ifname=\"{a}\",reason=\"address_gone\"}}", ns.name);
    assert_eq!(agent.wait_sample(&stranded)?, 1.0);

    let text = agent.metrics()?;
    for (name, labels) in &named {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))).collect();
        assert!(!lines.is_empty(), "the rules name {name}, which the agent's /metrics does not have:\n{text}");
        for label in labels {
            assert!(
                lines.iter().any(|l| l.contains(&format!("{label}=\""))),
                "the rules match {name} on label {label}, which the agent does not set: {lines:?}"
            );
        }
    }

    let prom = Prometheus::start(agent.port, Some(&rules_file()))?;
    let netns = ns.name.as_str();
    let wanted = [
        format!("netns_ifname:ifsock_stranded_sockets:sum{{netns=\"{netns}\",ifname=\"{a}\"}}"),
        format!("netns:ifsock_blocked_receivers_stranded:sum{{netns=\"{netns}\"}}"),
        format!("ALERTS{{alertname=\"IfsockStrandedSockets\",alertstate=\"pending\",netns=\"{netns}\",ifname=\"{a}\",job=\"ifsock\"}}"),
        format!("ALERTS{{alertname=\"IfsockReceiversBlockedOnStrandedSockets\",alertstate=\"pending\",netns=\"{netns}\",job=\"ifsock\"}}"),
        "up{job=\"ifsock\"} == 1".to_string(),
    ];
    for q in &wanted {
        poll(q, Duration::from_secs(60), || !prom.query(q).is_empty())?;
    }
    // Nothing is lost or failed on an idle agent: those alerts stay quiet.
    for quiet in ["IfsockEventsLost", "IfsockJournalWriteErrors", "IfsockAgentDown"] {
        let q = format!("ALERTS{{alertname=\"{quiet}\"}}");
        assert!(prom.query(&q).is_empty(), "{quiet} is active on a healthy agent: {:?}", prom.query(&q));
    }
    drop(receiver);
    Ok(())
}

/// The agent under `umask 0022` (set in the child by `pre_exec`), journaling to `dir` (removed
/// when the returned agent is dropped).
fn agent_under_umask_022(dir: &TempDir, extra: &[&str]) -> Result<Agent> {
    let port = free_port();
    let mut cmd = Command::new(ifsock_bin());
    cmd.args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--journal"]).arg(&dir.0).args(extra);
    // SAFETY: umask(2) is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
    let mut agent = Agent { child, port, journal: TempDir(dir.0.clone()) };
    poll("the agent's /healthz", Duration::from_secs(60), || get(port, "/healthz").is_ok_and(|(s, b)| s == 200 && b == "ok\n"))
        .or_else(|e| match agent.child.try_wait() {
            Ok(Some(status)) => bail!("agent exited before serving: {status}"),
            _ => Err(e),
        })?;
    Ok(agent)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).unwrap_or(u32::MAX)
}

fn assert_private(dir: &Path, when: &str) {
    assert_eq!(mode(dir), 0o700, "journal directory {} {when}: mode {:o}", dir.display(), mode(dir));
    let files = journal_files(dir);
    assert!(!files.is_empty(), "no segment in {} {when}", dir.display());
    for f in files {
        assert_eq!(mode(&f), 0o600, "segment {} {when}: mode {:o}", f.display(), mode(&f));
    }
}

#[test]
fn journal_is_0700_with_0600_segments_under_umask_022_also_after_rotation() -> Result<()> {
    require_root();
    let parent = TempDir::new("jmode");
    let dir = TempDir(parent.0.join("journal"));
    let mut agent = agent_under_umask_022(&dir, &["--journal-max-bytes", "32768"])?;
    assert_private(&dir.0, "after creation");

    // 32 KiB bound: 4 KiB segments. Veth pairs created and deleted in a netns of our own write
    // change records until the journal rotates.
    let ns = Netns::new()?;
    let mut round = 0;
    poll("the journal to rotate", Duration::from_secs(120), || {
        if journal_files(&dir.0).len() > 1 {
            return true;
        }
        let (a, b) = (unique("jm"), unique("jn"));
        round += 1;
        ns.veth(&a, &b, None).is_ok() && ns.ip(&["link", "del", &a]).is_ok()
    })?;
    assert!(round > 0);
    assert_private(&dir.0, "after rotation");
    assert_eq!(agent.terminate()?.code(), Some(143));

    // A directory left 0755 (by an older version or by hand) is made 0700 at start.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))?;
    let again = agent_under_umask_022(&dir, &[])?;
    assert_private(&dir.0, "after a restart on a 0755 directory");
    assert!(sample(&again.metrics()?, "ifsock_journal_write_errors_total").is_some_and(|v| v == 0.0));
    drop(again);
    drop(agent);
    Ok(())
}
