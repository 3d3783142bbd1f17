//! Snapshots of the human output of each subcommand: tables fit 120 columns unless `--wide`,
//! a summary line or a "none found" line that says what was searched, one lowercase spelling
//! per value, short start-up lines. Variable parts (names, inodes, pids, ports) are replaced by
//! placeholders; column padding is collapsed, so the words are asserted exactly.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use ifsock_tests::*;

const T: Duration = Duration::from_secs(20);

/// Replaces each `(from, to)` (longest first, so that a name holding another is replaced
/// whole), then collapses runs of spaces (column padding) to one.
fn norm(text: &str, subst: &[(String, &str)]) -> Vec<String> {
    let mut subst: Vec<&(String, &str)> = subst.iter().collect();
    subst.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    text.lines()
        .map(|l| {
            let mut l = l.to_string();
            for (from, to) in &subst {
                l = l.replace(from.as_str(), to);
            }
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn stdout_of(args: &[&str]) -> String {
    let out = ifsock(args).unwrap();
    assert!(out.status.success(), "ifsock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_fits(text: &str, what: &str) {
    for l in text.lines() {
        assert!(l.chars().count() <= 120, "{what}: a line wider than 120 columns ({}):\n{text}", l.chars().count());
    }
}

/// The debug spellings that human output once used: every value has one lowercase spelling.
fn assert_lowercase_spelling(text: &str, what: &str) {
    for word in ["Udp", "Tcp", "CurrentFd", "Tracepoint", "Fentry", "Kprobe", "Exact", "Inferred"] {
        assert!(!text.split(|c: char| !c.is_alphanumeric()).any(|w| w == word), "{what}: {word:?} in:\n{text}");
    }
}

#[test]
fn sockets_table_has_a_summary_fits_120_columns_and_says_what_was_searched_when_empty() {
    require_root();
    let ns = Netns::new().unwrap();
    let ino = ns.ino().unwrap().to_string();
    let (a, b) = (unique("ha"), unique("hb"));
    ns.veth(&a, &b, Some("10.251.3.1/24")).unwrap();
    let sock = ns.run(|| std::net::UdpSocket::bind("10.251.3.1:0")).unwrap().unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let inode = socket_inode(&sock).unwrap().to_string();
    let pid = std::process::id().to_string();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();
    let subst = [(ns.name.clone(), "NS"), (ino.clone(), "INO"), (a.clone(), "A"), (port, "PORT"), (inode, "INODE"), (pid, "PID"), (comm, "COMM")];

    let text = stdout_of(&["--netns", &ns.name, "sockets", "--iface", &a]);
    assert_fits(&text, "sockets");
    assert_lowercase_spelling(&text, "sockets");
    let lines = norm(&text, &subst);
    assert_eq!(lines[0], "IFACE BINDING PROTO LOCAL REMOTE STATE INODE STATUS OWNERS WAITERS", "{text}");
    assert!(lines[1].starts_with("A address udp4 10.251.3.1:PORT 0.0.0.0:0 UNCONN INODE ok COMM[PID]/fd"), "{text}");
    assert!(lines[1].ends_with(" -"), "no waiter: {text}");
    assert_eq!(lines.last().map(String::as_str), Some("1 socket, 0 stranded in netns NS (INO)"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");

    // Nothing matched: one line naming the scope and the filters, not a bare header.
    let text = stdout_of(&["--netns", &ns.name, "sockets", "--iface", &b, "--stranded"]);
    assert_eq!(norm(&text, &subst), vec![format!("no sockets found in netns NS (INO) (filters: --iface {b}, --stranded)")], "{text}");
    drop(sock);
}

#[test]
fn a_wide_socket_table_is_cut_to_120_columns_honestly_and_whole_with_wide() {
    require_root();
    let ns = Netns::new().unwrap();
    // 15 bytes: the longest name an interface can have.
    let u = unique("hw");
    let a = format!("{}{u}", "w".repeat(15usize.saturating_sub(u.len())));
    let b = unique("hx");
    ns.veth(&a, &b, None).unwrap();
    let addr = "fd00:aaaa:bbbb:cccc:dddd:eeee:ffff:1";
    ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", &a, "nodad"]).unwrap();
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    let listener = ns.run(|| std::net::TcpListener::bind(format!("[{addr}]:0"))).unwrap().unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = ns.run(|| std::net::TcpStream::connect(format!("[{addr}]:{port}"))).unwrap().unwrap();
    let (server, _) = listener.accept().unwrap();
    // Several owners of one socket: the default table shows the first and a count.
    let dups: Vec<_> = (0..3).map(|_| server.try_clone().unwrap()).collect();

    let text = stdout_of(&["--netns", &ns.name, "sockets", "--iface", &a]);
    assert_fits(&text, "sockets");
    assert!(text.contains('…'), "something had to be cut: {text}");
    assert!(text.contains("(cells ending in … were cut to fit 120 columns; --wide shows them whole)"), "{text}");
    assert!(text.lines().last().is_some_and(|l| l.starts_with("3 sockets, 0 stranded in netns ")), "{text}");

    let wide = stdout_of(&["--netns", &ns.name, "--wide", "sockets", "--iface", &a]);
    assert!(wide.lines().any(|l| l.chars().count() > 120), "--wide keeps every column whole: {wide}");
    assert!(!wide.contains('…') && wide.contains(&format!("[{addr}]:{port}")), "{wide}");
    assert!(wide.starts_with("NETNS ") && wide.lines().next().is_some_and(|h| h.contains(" PKTINFO ")), "{wide}");
    // All four fds of the accepted socket, whole.
    let pid = std::process::id();
    assert!(wide.lines().any(|l| l.matches(&format!("[{pid}]/fd")).count() == 4), "{wide}");
    drop((dups, server, client, listener));
}

#[test]
fn hung_table_has_a_summary_and_says_what_was_searched_when_empty() {
    require_root();
    let ns = Netns::new().unwrap();
    let ino = ns.ino().unwrap().to_string();
    let r = BlockedReceiver::start(&ns, "127.0.0.1:0", false, None).unwrap();
    let pid = std::process::id().to_string();
    let subst = [(ns.name.clone(), "NS"), (ino.clone(), "INO"), (pid.clone(), "PID"), (r.tid.to_string(), "TID")];

    let text = stdout_of(&["--netns", &ns.name, "hung", "--min-blocked", "0", "--pid", &pid]);
    assert_fits(&text, "hung");
    assert_lowercase_spelling(&text, "hung");
    let lines = norm(&text, &subst);
    assert_eq!(lines[0], "PID/TID COMM SYSCALL BLOCKED SOCKET CERTAINTY STATUS INTERFACES", "{text}");
    // The receiver is on its socket's wait queue (exact); procfs's fd where the walk cannot run.
    let certainty = if skip::Feature::Iterators.available().is_ok() { " exact - lo(" } else { " current_fd - lo(" };
    assert!(lines.iter().any(|l| l.starts_with("PID/TID ") && l.contains(certainty)), "{text}");
    assert_eq!(lines.last().map(String::as_str), Some("1 blocked receiver, 0 stranded in netns NS (INO)"), "{text}");

    let empty = Netns::new().unwrap();
    let text = stdout_of(&["--netns", &empty.name, "hung", "--min-blocked", "5s"]);
    let subst = [(empty.name.clone(), "NS"), (empty.ino().unwrap().to_string(), "INO")];
    assert_eq!(norm(&text, &subst), vec!["no blocked receivers found in netns NS (INO) (filters: blocked at least 5.0s)"], "{text}");
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
    r.close_fd();
}

#[test]
fn tun_and_teardown_name_the_netns_and_say_when_there_is_none() {
    require_root();
    let ns = Netns::new().unwrap();
    let ino = ns.ino().unwrap().to_string();
    let text = stdout_of(&["--netns", &ns.name, "tun"]);
    assert_eq!(text, format!("no tun/tap devices in netns {ino}\n"));
    let text = stdout_of(&["tun", "--all-netns", "--interval", "0"]);
    assert!(text.starts_with("no tun/tap devices in ") || text.contains(" ifindex "), "tun --all-netns runs: {text}");

    let (a, b) = (unique("hd"), unique("he"));
    ns.veth(&a, &b, Some("10.251.4.1/24")).unwrap();
    let index = ns.ifindex(&a).unwrap().to_string();
    let text = stdout_of(&["--netns", &ns.name, "teardown", &a, "--dry-run"]);
    assert_lowercase_spelling(&text, "teardown");
    let lines = norm(&text, &[(ns.name.clone(), "NS"), (ino, "INO"), (a, "A"), (index, "N")]);
    assert!(lines[0].starts_with("dry run: would tear down A (ifindex N, kind veth, netns NS (INO)): was up, addresses 10.251.4.1"), "{text}");
}

/// Starts a human `watch` with piped stdout and stderr; returns the child and the stderr lines.
fn watch_human(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(ifsock_bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_err_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(T).unwrap_or_else(|e| panic!("no {what} on stderr: {e}"))
}

#[test]
fn watch_starts_with_one_short_line_says_it_waits_for_a_missing_name_and_spells_protocols_lowercase() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("hw"), unique("hv"));
    ns.veth(&a, &b, Some("10.251.5.1/24")).unwrap();
    let sock = ns.run(|| std::net::UdpSocket::bind("10.251.5.1:0")).unwrap().unwrap();

    // A name that does not exist yet: said on stderr, with the names there are.
    let missing = unique("hq");
    let (mut w, err) = watch_human(&["--netns", &ns.name, "watch", "--iface", &missing, "--reconcile-every", "0"]);
    let ready = next_err_line(&err, "start-up line");
    assert!(ready.starts_with("watching 1 netns (3 links), ") && ready.ends_with("; Ctrl-C to stop, -v for details"), "{ready}");
    // Receivers come from the wait queues without --record-receives: nothing is missing to say.
    assert!(!ready.contains("receive"), "{ready}");
    assert!(ready.chars().count() <= 120, "{ready}");
    assert_lowercase_spelling(&ready, "watch start-up");
    let waiting = next_err_line(&err, "waiting line");
    assert!(waiting.starts_with(&format!("no interface {missing:?} in this netns yet: waiting for it (")), "{waiting}");
    assert!(waiting.contains(&a) && waiting.contains(&b), "the names there are: {waiting}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.id() as i32), nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait().unwrap().success());

    // A change with a bound socket: its line says `udp`, as the JSON does.
    let mut w = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "watch", "--iface", &a, "--sockets-inline", "--reconcile-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = w.stdout.take().unwrap();
    let (tx, out) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let inode = socket_inode(&sock).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + T;
    // The watch is ready when its first dump is done; changes made before are in the dump, so
    // flip the interface until a change line with the socket comes (bounded by T).
    let mut up = true;
    while std::time::Instant::now() < deadline && !seen.iter().any(|l: &String| l.starts_with("    udp ") && l.contains(&format!("inode {inode}"))) {
        ns.ip(&["link", "set", &a, if up { "down" } else { "up" }]).unwrap();
        up = !up;
        while let Ok(l) = out.recv_timeout(Duration::from_millis(500)) {
            seen.push(l);
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.id() as i32), nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait().unwrap().success());
    let text = seen.join("\n");
    assert_lowercase_spelling(&text, "watch");
    assert!(seen.iter().any(|l| l.starts_with("    udp ") && l.contains(&format!("inode {inode}"))), "{text}");
    drop(sock);
}
