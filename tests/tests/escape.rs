//! Untrusted names never drive the operator's terminal: an interface named with ESC and BEL
//! (any user can name one so in its own user+net namespace) and a process whose comm holds a
//! newline and an ANSI escape are printed escaped (`\x1b`, `\n`) by every human renderer that
//! shows them, and exactly by `--json`.
use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::*;

/// The comm the child process gives itself (8 bytes; comm holds 15).
const EVIL_COMM: &str = "c\n\u{1b}[31mX";

/// An interface name with ESC (a clear-screen sequence) and BEL, unique per test run.
fn evil_ifname() -> String {
    format!("\u{1b}[2J\u{7}{}", unique("e"))
}

/// Fails when `out` holds a control byte other than the line ends: C0 except `\n`, DEL, or a
/// C1 control (U+0080–U+009F, UTF-8 `C2 80`–`C2 9F`).
fn assert_no_control_bytes(what: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for (i, w) in out.windows(2).enumerate() {
        assert!(!(w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])), "{what}: C1 control at byte {i}:\n{text}");
    }
    if let Some(i) = out.iter().position(|&b| (b < 0x20 && b != b'\n') || b == 0x7f) {
        panic!("{what}: control byte {:#04x} at byte {i} reached stdout:\n{text}", out[i]);
    }
}

/// Runs ifsock, fails with stderr when it fails, checks stdout for control bytes and returns it.
fn human(what: &str, args: &[&str]) -> String {
    let out = ifsock(args).unwrap();
    assert!(out.status.success(), "{what}: ifsock {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_no_control_bytes(what, &out.stdout);
    assert_no_control_bytes(&format!("{what} (stderr)"), &out.stderr);
    String::from_utf8(out.stdout).unwrap()
}

/// A forked child in `ns` that names itself [`EVIL_COMM`], binds a UDP socket to `device`
/// (`SO_BINDTODEVICE`) and blocks in `recvmsg` on it; killed and reaped in `Drop`.
struct EvilChild {
    pid: nix::unistd::Pid,
}

impl EvilChild {
    fn start(ns: &Netns, device: &str) -> Result<Self> {
        // Everything the child needs is prepared before the fork: it only makes syscalls.
        let netns = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        let comm = CString::new(EVIL_COMM)?;
        let dev = device.as_bytes().to_vec();
        let (rd, wr) = nix::unistd::pipe()?;
        // SAFETY: the child makes only async-signal-safe syscalls, then blocks or exits.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => unsafe {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    libc::_exit(10);
                }
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                if s < 0 || libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr().cast(), dev.len() as u32) != 0 {
                    libc::_exit(11);
                }
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as u16;
                if libc::bind(s, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
                    libc::_exit(12);
                }
                libc::write(wr.as_raw_fd(), b"k".as_ptr().cast(), 1);
                let mut buf = [0u8; 64];
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                libc::recvmsg(s, &mut msg, 0);
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(wr);
                let me = EvilChild { pid: child };
                let mut ok = [0u8; 1];
                let n = nix::unistd::read(&rd, &mut ok)?;
                if n != 1 {
                    bail!("the evil-comm child exited before binding its socket: {:?}", nix::sys::wait::waitpid(child, None));
                }
                let pid = child.as_raw();
                wait_until("the child blocked in recvmsg", Duration::from_secs(10), || in_syscall(pid as u32, &[libc::SYS_recvmsg]))?;
                Ok(me)
            }
        }
    }
}

impl Drop for EvilChild {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// A namespace holding the evil interface (a veth, up) and the evil-comm child bound to it.
fn setup() -> (Netns, String, EvilChild) {
    require_root();
    let ns = Netns::new().unwrap();
    let evil = evil_ifname();
    let peer = unique("ep");
    ns.ip(&["link", "add", &evil, "type", "veth", "peer", "name", &peer]).unwrap();
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", &evil]).unwrap();
    ns.ip(&["link", "set", &evil, "up"]).unwrap();
    ns.ip(&["link", "set", &peer, "up"]).unwrap();
    let child = EvilChild::start(&ns, &evil).unwrap();
    (ns, evil, child)
}

#[test]
fn sockets_and_hung_escape_names_and_comms_and_json_keeps_them_exact() {
    let (ns, evil, child) = setup();
    let pid = child.pid.as_raw().to_string();

    for (what, args) in [
        // --wide: the escaped name (four characters per control character) stays whole.
        ("sockets", vec!["--wide", "--netns", &ns.name, "sockets"]),
        ("sockets --iface", vec!["--wide", "--netns", &ns.name, "sockets", "--iface", &evil]),
        ("sockets --all-netns", vec!["--wide", "sockets", "--all-netns"]),
    ] {
        let text = human(what, &args);
        assert!(text.contains("\\x1b[2J\\x07e"), "{what}: the interface name is not shown escaped:\n{text}");
        assert!(text.contains("c\\n\\x1b[31mX["), "{what}: the owner's comm is not shown escaped:\n{text}");
    }
    let text = human("hung", &["--wide", "--netns", &ns.name, "hung", "--min-blocked", "0", "--pid", &pid]);
    assert!(text.contains("c\\n\\x1b[31mX"), "hung: the comm is not shown escaped:\n{text}");
    assert!(text.contains("\\x1b[2J\\x07e"), "hung: the interface name is not shown escaped:\n{text}");

    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--iface", &evil, "--json"]).unwrap();
    let row = rows.iter().find(|r| r["owners"].as_array().is_some_and(|o| o.iter().any(|o| o["pid"].as_u64() == Some(u64::from(child.pid.as_raw().unsigned_abs()))))).expect("the child's socket row");
    assert_eq!(row["ifname"], evil.as_str(), "{row:#}");
    assert_eq!(row["owners"][0]["comm"], EVIL_COMM, "{row:#}");
    let rows = ifsock_json(&["--netns", &ns.name, "hung", "--min-blocked", "0", "--pid", &pid, "--json"]).unwrap();
    let r = rows.first().expect("the child's receiver");
    assert_eq!(r["comm"], EVIL_COMM, "{r:#}");
    assert!(r.to_string().contains(&serde_json::to_string(&evil).unwrap()), "hung --json lost the exact name: {r:#}");
}

#[test]
fn watch_prints_a_change_of_an_evil_interface_escaped() {
    let (ns, evil, _child) = setup();
    let mut w = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "watch", "--iface", &evil, "--reconcile-every", "0", "--sockets-inline"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    for (is_err, pipe) in [(false, Box::new(w.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>), (true, Box::new(w.stderr.take().unwrap()))] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                if tx.send((is_err, l)).is_err() {
                    break;
                }
            }
        });
    }
    let next = |want: &dyn Fn(bool, &str) -> bool, what: &str| -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let (is_err, l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).with_context(|| format!("watch: no {what} line; saw {seen:?}"))?;
            let text = String::from_utf8_lossy(&l).into_owned();
            seen.push(l);
            if want(is_err, &text) {
                return Ok(seen);
            }
        }
    };
    let result = (|| -> Result<()> {
        next(&|is_err, l| is_err && l.starts_with("watching"), "ready (stderr)")?;
        ns.ip(&["link", "set", &evil, "down"])?;
        let lines = next(&|is_err, l| !is_err && l.contains(" down "), "down")?;
        for l in &lines {
            assert_no_control_bytes("watch", l);
        }
        let text: Vec<String> = lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        anyhow::ensure!(text.iter().any(|l| l.contains("\\x1b[2J\\x07e")), "watch: the name is not shown escaped: {text:#?}");
        Ok(())
    })();
    let _ = w.kill();
    let _ = w.wait();
    result.unwrap();
}

#[test]
fn journal_prints_recorded_evil_names_escaped_and_json_as_stored() {
    require_root();
    let evil = evil_ifname();
    let dir = std::env::temp_dir().join(format!("ifsock-esc-{}", unique("j")));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // A whole change record as the agent journals it (docs/schema/journal.json validates it).
    let record = serde_json::json!({"type": "change", "ts_unix_ns": now, "source": "netlink", "netns": 7, "netns_name": "ns\u{1b}]0;t\u{7}", "event": "deleted", "ifindex": 5, "name": evil, "cause": null, "sockets": []});
    {
        let mut j = ifsock::journal::Journal::open(&dir, ifsock::journal::DEFAULT_MAX_BYTES).unwrap();
        j.append(&record).unwrap();
        j.flush().unwrap();
    }
    let d = dir.to_string_lossy().into_owned();
    let text = human("journal", &["journal", "--journal", &d]);
    assert!(text.contains("\\x1b[2J\\x07e"), "journal: the name is not shown escaped:\n{text}");
    assert!(text.contains("ns\\x1b]0;t\\x07"), "journal: the netns name is not shown escaped:\n{text}");
    let rows = ifsock_json(&["journal", "--journal", &d, "--json"]).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["name"], evil.as_str());
    assert_eq!(rows[0]["netns_name"], "ns\u{1b}]0;t\u{7}");
}

#[test]
fn tun_prints_an_evil_device_name_escaped() {
    require_root();
    let ns = Netns::new().unwrap();
    let evil = evil_ifname();
    let n2 = evil.clone();
    let _queue = ns.run(move || tun_queue(&n2, IFF_TUN | IFF_NO_PI)).unwrap().unwrap();
    let text = human("tun", &["--netns", &ns.name, "tun", "--interval", "0"]);
    assert!(text.contains("\\x1b[2J\\x07e"), "tun: the name is not shown escaped:\n{text}");
    let rows = ifsock_json(&["--netns", &ns.name, "tun", "--interval", "0", "--json"]).unwrap();
    assert!(rows.iter().any(|r| r["name"] == evil.as_str()), "{rows:#?}");
}
