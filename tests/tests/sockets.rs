//! `ifsock sockets` against the real kernel, in a namespace of the test's own.
use std::{
    net::{TcpListener, UdpSocket},
    os::fd::AsRawFd,
};

use ifsock_tests::*;
use serde_json::Value;

fn find<'a>(rows: &'a [Value], proto: &str, port: u16) -> Option<&'a Value> {
    rows.iter().find(|r| r["protocol"] == proto && r["local_port"] == port)
}

#[test]
fn sockets_reports_device_address_and_wildcard_bindings_with_owners() {
    require_root();
    // The socket and owner walks are BPF iterators (iter/udp, iter/tcp, iter/task_file).
    if !ifsock_tests::skip::needs(ifsock_tests::skip::Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b, c, d) = (unique("va"), unique("vb"), unique("vc"), unique("vd"));
    ns.veth(&a, &b, Some("10.201.0.1/24")).unwrap();
    ns.veth(&c, &d, Some("10.202.0.1/24")).unwrap();
    let tun = unique("tn");
    ns.ip(&["tuntap", "add", "mode", "tun", "name", &tun]).unwrap();
    let a_index = ns.ifindex(&a).unwrap();

    let (a2, c2, tun2) = (a.clone(), c.clone(), tun.clone());
    let socks = ns
        .run(move || -> anyhow::Result<_> {
            let dev = UdpSocket::bind("0.0.0.0:6101")?;
            bind_to_device(&dev, &a2)?;
            let addr = UdpSocket::bind("10.201.0.1:6102")?;
            let wild = UdpSocket::bind("0.0.0.0:6103")?;
            set_pktinfo(&wild)?;
            let tcp = TcpListener::bind("10.201.0.1:6104")?;
            let other = UdpSocket::bind("0.0.0.0:6105")?;
            bind_to_device(&other, &c2)?;
            let on_tun = UdpSocket::bind("0.0.0.0:6106")?;
            bind_to_device(&on_tun, &tun2)?;
            Ok((dev, addr, wild, tcp, other, on_tun))
        })
        .unwrap()
        .unwrap();
    let pid = std::process::id();

    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--iface", &a, "--json"]).unwrap();
    let expect = |proto: &str, port: u16, binding: &str, pktinfo: bool, fd: i32| {
        let row = find(&rows, proto, port).unwrap_or_else(|| panic!("{proto} :{port} missing from {rows:#?}"));
        assert_eq!(row["binding"], binding, "{row}");
        assert_eq!(row["pktinfo"], pktinfo, "{row}");
        assert_eq!(row["ifindex"], a_index, "{row}");
        assert_eq!(row["netns"], ns.ino().unwrap(), "{row}");
        let owners = row["owners"].as_array().unwrap();
        assert!(owners.iter().any(|o| o["pid"] == pid && o["fd"] == fd), "owner pid {pid} fd {fd} not in {row}");
    };
    expect("udp", 6101, "device", false, socks.0.as_raw_fd());
    expect("udp", 6102, "address", false, socks.1.as_raw_fd());
    expect("udp", 6103, "wildcard", true, socks.2.as_raw_fd());
    expect("tcp", 6104, "address", false, socks.3.as_raw_fd());
    assert_eq!(find(&rows, "udp", 6101).unwrap()["bound_dev_name"], a.as_str());
    assert!(find(&rows, "udp", 6105).is_none(), "socket bound to {c} reported for {a}");
    assert!(find(&rows, "udp", 6106).is_none(), "socket bound to {tun} reported for {a}");

    let tun_rows = ifsock_json(&["--netns", &ns.name, "sockets", "--iface", &tun, "--json"]).unwrap();
    let on_tun = find(&tun_rows, "udp", 6106).expect("tun-bound socket reported for the tun device");
    assert_eq!(on_tun["binding"], "device");

    // The same answer through --all-netns from ifsock's own namespace.
    let all = ifsock_json(&["sockets", "--all-netns", "--iface", &a, "--json"]).unwrap();
    assert!(find(&all, "udp", 6101).is_some_and(|r| r["binding"] == "device"));
    drop(socks);
}

#[test]
fn sockets_without_filter_lists_each_socket_once() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("va"), unique("vb"));
    ns.veth(&a, &b, Some("10.203.0.1/24")).unwrap();
    let a2 = a.clone();
    let s = ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("0.0.0.0:6201")?;
            bind_to_device(&s, &a2)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    let mine: Vec<&Value> = rows.iter().filter(|r| r["local_port"] == 6201).collect();
    assert_eq!(mine.len(), 1, "{rows:#?}");
    assert_eq!(mine[0]["ifname"], a.as_str());
    drop(s);
}

/// `ss -tan` data lines (state column first) in `ns`.
fn ss_tcp(ns: &Netns) -> Vec<String> {
    ss(ns, "-tanH")
}

/// `ss FLAGS` data lines in `ns` (the kernel's own listing, over sock_diag).
fn ss(ns: &Netns, flags: &str) -> Vec<String> {
    let out = sh(&["ip", "netns", "exec", &ns.name, "ss", flags]).unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// The local port of an `ss -n` data line (`STATE RECV-Q SEND-Q LOCAL:PORT PEER:PORT …`).
fn ss_local_port(line: &str) -> Option<u64> {
    line.split_whitespace().nth(3)?.rsplit_once(':')?.1.parse().ok()
}

/// `(pid, fd)` of every owner in an `ss -p` line (`users:(("comm",pid=P,fd=F),…)`).
fn ss_owners(line: &str) -> Vec<(u64, i64)> {
    line.split("pid=")
        .skip(1)
        .filter_map(|rest| {
            let (pid, rest) = rest.split_once(",fd=")?;
            let fd: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((pid.parse().ok()?, fd.parse().ok()?))
        })
        .collect()
}

/// One count of one protocol line of `/proc/net/sockstat{,6}` as seen in `ns`
/// (`"sockstat", "TCP", "inuse"`).
fn sockstat(ns: &Netns, file: &str, proto: &str, field: &str) -> u64 {
    // thread-self: /proc/net is /proc/self/net, the netns of the thread group leader.
    let text = ns.run(|| std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))).unwrap().unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{proto}:"))).unwrap_or_else(|| panic!("no {proto} in {file}: {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == field).unwrap_or_else(|| panic!("no {field} in {line}"));
    words[at + 1].parse().unwrap()
}

#[test]
fn sockets_lists_tcp_time_wait_like_ss() {
    require_root();
    let ns = Netns::new().unwrap();
    // The client closes first, so the client side goes through FIN_WAIT to TIME_WAIT
    // (the server's side ends in CLOSED once its FIN is acknowledged).
    let (listener, client_port) = ns
        .run(|| -> anyhow::Result<_> {
            use std::io::Read;
            let listener = TcpListener::bind("127.0.0.1:6301")?;
            let client = std::net::TcpStream::connect("127.0.0.1:6301")?;
            let client_port = client.local_addr()?.port();
            let (mut server, _) = listener.accept()?;
            drop(client);
            let mut buf = [0u8; 1];
            assert_eq!(server.read(&mut buf)?, 0, "server sees the client's FIN");
            drop(server);
            Ok((listener, client_port))
        })
        .unwrap()
        .unwrap();
    wait_until("the client socket in TIME-WAIT (ss -tan)", std::time::Duration::from_secs(10), || {
        ss_tcp(&ns).iter().any(|l| l.starts_with("TIME-WAIT") && l.contains(&format!(":{client_port} ")))
    })
    .unwrap();

    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    let tcp: Vec<&Value> = rows.iter().filter(|r| r["protocol"] == "tcp").collect();
    let ss = ss_tcp(&ns);
    assert_eq!(tcp.len(), ss.len(), "ifsock tcp rows {tcp:#?} vs ss -tan {ss:#?}");
    let tw = find(&rows, "tcp", client_port).unwrap_or_else(|| panic!("TIME_WAIT :{client_port} missing from {rows:#?}"));
    assert_eq!(tw["state"], "TIME_WAIT", "{tw}");
    assert_eq!(tw["remote_port"], 6301, "{tw}");
    assert_eq!(tw["inode"], 0, "{tw}");
    assert!(tw["owners"].as_array().unwrap().is_empty(), "{tw}");
    assert!(tw["cookie"].as_u64().unwrap() != 0, "{tw}");
    drop(listener);
}

#[test]
fn sockets_rows_carry_distinct_nonzero_cookies() {
    require_root();
    let ns = Netns::new().unwrap();
    let socks = ns
        .run(|| -> anyhow::Result<_> { Ok((UdpSocket::bind("127.0.0.1:6311")?, UdpSocket::bind("127.0.0.1:6312")?, TcpListener::bind("127.0.0.1:6313")?)) })
        .unwrap()
        .unwrap();
    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    let cookies: Vec<u64> = [("udp", 6311), ("udp", 6312), ("tcp", 6313)]
        .iter()
        .map(|(p, port)| find(&rows, p, *port).unwrap_or_else(|| panic!("{p} :{port} missing from {rows:#?}"))["cookie"].as_u64().unwrap())
        .collect();
    assert!(cookies.iter().all(|c| *c != 0), "{cookies:?}");
    let unique: std::collections::HashSet<_> = cookies.iter().collect();
    assert_eq!(unique.len(), 3, "{cookies:?}");
    drop(socks);
}

#[test]
fn sockets_beyond_one_seq_buffer_are_each_listed_once_and_retries_are_counted() {
    require_root();
    // The kernel gives a BPF iterator a seq buffer of 8 pages (`bpf_seq_read()`); 900 sockets do
    // not fit in one: an overflow is a retry of the same socket in the next read(), never a loss
    // or a duplicate. The list is checked against the kernel's own (ss, over sock_diag).
    const N: u16 = 900;
    let ns = Netns::new().unwrap();
    let socks = ns
        .run(|| -> anyhow::Result<Vec<UdpSocket>> { (0..N).map(|i| Ok(UdpSocket::bind(("127.0.0.1", 20000 + i))?)).collect() })
        .unwrap()
        .unwrap();
    let out = ifsock(&["-vv", "--netns", &ns.name, "sockets", "--json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut ports: Vec<u64> = rows.iter().filter(|r| r["protocol"] == "udp").map(|r| r["local_port"].as_u64().unwrap()).collect();
    ports.sort_unstable();
    let want: Vec<u64> = (0..N).map(|i| u64::from(20000 + i)).collect();
    assert_eq!(ports, want, "every socket exactly once");
    let mut kernel: Vec<u64> = ss(&ns, "-uanH").iter().filter_map(|l| ss_local_port(l)).collect();
    kernel.sort_unstable();
    assert_eq!(ports, kernel, "the UDP sockets ss lists in the netns");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retries: u64 = stderr
        .split("iter_retries=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no iter_retries in the -vv log: {stderr}"));
    // The one view of the overflow path having run: ifsock's own counter of retried records.
    assert!(retries >= 1, "{N} records must overflow the seq buffer: iter_retries={retries}");
    drop(socks);
}

/// Above `OWNER_FILTER_WORTH` (1,024) sockets the owner walk (`iter/task_file`) runs on a
/// second thread beside the socket walk: every socket still gets its owner, the right fd.
#[test]
fn many_sockets_walked_beside_the_owner_walk_each_get_their_owner_and_fd() {
    require_root();
    const N: u16 = 1500;
    // The soft fd limit is often 1,024: raise it to the hard limit for the held sockets.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(lim.rlim_max >= u64::from(N) + 64, "hard RLIMIT_NOFILE {} is too low for {N} sockets", lim.rlim_max);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: valid pointer to an initialised rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let ns = Netns::new().unwrap();
    let socks = ns
        .run(|| -> anyhow::Result<Vec<UdpSocket>> { (0..N).map(|i| Ok(UdpSocket::bind(("127.0.0.1", 30000 + i))?)).collect() })
        .unwrap()
        .unwrap();
    let (rows, log) = sockets_with_log(&ns);
    // The path the test is named for leaves no trace in the kernel: its debug line is the evidence
    // that it ran; what it found is checked against the kernel below.
    assert!(log.contains("beside the socket walk"), "{N} sockets must take the parallel owner walk: {log}");
    let pid = std::process::id();
    // ss -p: the owners the kernel's sock_diag inodes and procfs fd links give, per port.
    let kernel: std::collections::HashMap<u64, Vec<(u64, i64)>> =
        ss(&ns, "-uanpH").iter().filter_map(|l| Some((ss_local_port(l)?, ss_owners(l)))).collect();
    for (i, s) in socks.iter().enumerate() {
        let port = 30000 + i as u16;
        let row = find(&rows, "udp", port).unwrap_or_else(|| panic!("udp :{port} missing"));
        let owners = row["owners"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{row}");
        assert_eq!((owners[0]["pid"].as_u64(), owners[0]["fd"].as_i64()), (Some(u64::from(pid)), Some(i64::from(s.as_raw_fd()))), "{row}");
        assert_eq!(kernel.get(&u64::from(port)), Some(&vec![(u64::from(pid), i64::from(s.as_raw_fd()))]), "ss -p on :{port}");
    }
    assert_eq!(rows.iter().filter(|r| r["protocol"] == "udp").count(), usize::from(N));
    drop(socks);
}

/// `--iface` filters in the kernel (`SockFilter` in `iter/udp`/`iter/tcp`): IPv4, IPv6 and
/// v4-mapped bindings to the interface's addresses, device bindings and wildcards come
/// through; sockets on another interface's address or device, and the many unrelated ones,
/// do not.
#[test]
fn iface_filter_in_the_kernel_keeps_v4_v6_mapped_device_and_wildcard_ties_only() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b, c, d) = (unique("fa"), unique("fb"), unique("fc"), unique("fd"));
    ns.veth(&a, &b, Some("10.203.0.1/24")).unwrap();
    ns.veth(&c, &d, Some("10.204.0.1/24")).unwrap();
    ns.ip(&["addr", "add", "fd03::1/64", "dev", &a, "nodad"]).unwrap();
    let c2 = c.clone();
    let socks = ns
        .run(move || -> anyhow::Result<_> {
            let mut held = vec![
                UdpSocket::bind("10.203.0.1:6201")?,
                UdpSocket::bind("[fd03::1]:6202")?,
                UdpSocket::bind("[::ffff:10.203.0.1]:6203")?,
                UdpSocket::bind("[::]:6204")?,
                UdpSocket::bind("0.0.0.0:6205")?,
            ];
            let on_c = UdpSocket::bind("0.0.0.0:6206")?;
            bind_to_device(&on_c, &c2)?;
            held.push(on_c);
            for port in 6300..6600 {
                held.push(UdpSocket::bind(("10.204.0.1", port))?);
            }
            Ok(held)
        })
        .unwrap()
        .unwrap();
    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--iface", &a, "--json"]).unwrap();
    let mut ports: Vec<u64> = rows.iter().filter(|r| r["protocol"] == "udp").filter_map(|r| r["local_port"].as_u64()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![6201, 6202, 6203, 6204, 6205], "{rows:#?}");
    let mapped = find(&rows, "udp", 6203).unwrap();
    assert_eq!(mapped["binding"], "address", "{mapped}");
    assert_eq!(find(&rows, "udp", 6204).unwrap()["binding"], "wildcard");
    // The unfiltered listing still has every socket.
    let all = ifsock_json(&["--netns", &ns.name, "sockets", "--json"]).unwrap();
    assert!(all.len() >= socks.len(), "{} rows for {} sockets", all.len(), socks.len());
    drop(socks);
}

/// `sockets --json` in `ns` with ifsock's debug log: the rows and stderr.
fn sockets_with_log(ns: &Netns) -> (Vec<Value>, String) {
    let out = std::process::Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "sockets", "--json"])
        .env("RUST_LOG", "ifsock=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (rows, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The walk of a table is skipped only while the netns's `sockstat` counts say it holds none
/// of its sockets: a lone IPv6 listener (`sockstat6`) and a lone TIME_WAIT socket (`tw`) each
/// bring the TCP walk back.
#[test]
fn a_table_without_sockets_of_the_netns_is_not_walked_and_one_socket_brings_the_walk_back() {
    require_root();
    let ns = Netns::new().unwrap();
    let udp = ns.run(|| UdpSocket::bind("127.0.0.1:6401")).unwrap().unwrap();
    assert_eq!((sockstat(&ns, "sockstat", "TCP", "inuse"), sockstat(&ns, "sockstat6", "TCP6", "inuse")), (0, 0), "the kernel counts no TCP socket here");
    let (rows, log) = sockets_with_log(&ns);
    assert!(find(&rows, "udp", 6401).is_some(), "{rows:#?}");
    assert!(rows.iter().all(|r| r["protocol"] != "tcp"), "{rows:#?}");
    // The skip leaves no trace in the kernel: its debug line is the evidence that it happened.
    assert!(log.contains("walks skipped"), "no skipped TCP walk in the log: {log}");

    // A lone IPv6 listener: sockstat counts it in sockstat6 only.
    let v6 = ns.run(|| TcpListener::bind("[::1]:6402")).unwrap().unwrap();
    assert_eq!((sockstat(&ns, "sockstat", "TCP", "inuse"), sockstat(&ns, "sockstat6", "TCP6", "inuse")), (0, 1), "the listener is counted in sockstat6 only");
    let (rows, _) = sockets_with_log(&ns);
    assert!(find(&rows, "tcp", 6402).is_some_and(|r| r["state"] == "LISTEN"), "IPv6 listener missing: {rows:#?}");
    assert_eq!(rows.iter().filter(|r| r["protocol"] == "tcp").count(), ss_tcp(&ns).len(), "the TCP sockets ss lists");

    // The client closes first and the listener goes: only the client's TIME_WAIT is left.
    let client_port = ns
        .run(move || -> anyhow::Result<u16> {
            use std::io::Read;
            let client = std::net::TcpStream::connect("[::1]:6402")?;
            let port = client.local_addr()?.port();
            let (mut server, _) = v6.accept()?;
            drop(client);
            assert_eq!(server.read(&mut [0u8; 1])?, 0, "server sees the client's FIN");
            drop(server);
            drop(v6);
            Ok(port)
        })
        .unwrap()
        .unwrap();
    wait_until("only the client's TIME-WAIT left (ss -tan)", std::time::Duration::from_secs(10), || {
        let ss = ss_tcp(&ns);
        ss.len() == 1 && ss[0].starts_with("TIME-WAIT") && ss[0].contains(&format!(":{client_port} "))
    })
    .unwrap();
    assert_eq!(sockstat(&ns, "sockstat", "TCP", "tw"), 1, "the kernel counts the TIME_WAIT socket");
    let (rows, _) = sockets_with_log(&ns);
    assert!(find(&rows, "tcp", client_port).is_some_and(|r| r["state"] == "TIME_WAIT"), "TIME_WAIT :{client_port} missing: {rows:#?}");
    drop(udp);
}
