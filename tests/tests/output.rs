//! Output of batch commands: `sockets --json` writes in large chunks, not one `write(2)` per
//! line, and a reader that goes away still ends it quietly with status 141.
use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ifsock_tests::*;

/// 4,000 UDP sockets in a fresh netns: `sockets --json` prints about 1.9 MB, more than a pipe
/// holds once ifsock has widened it to 1 MiB.
fn netns_with_sockets() -> Result<(Netns, Vec<UdpSocket>)> {
    // 4,000 sockets need more than the usual soft limit of 1,024 fds (the VM guest's is that;
    // its hard limit is the kernel's default for init, 4,096).
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (soft, hard) = nix::sys::resource::getrlimit(limit)?;
    let want = hard.min(8192);
    if soft < want {
        nix::sys::resource::setrlimit(limit, want, hard)?;
    }
    anyhow::ensure!(want >= 4064, "RLIMIT_NOFILE hard limit {hard} is below the 4,064 fds this test needs");
    let ns = Netns::new()?;
    let socks = ns.run(|| -> Result<Vec<UdpSocket>> { (0..4000).map(|_| Ok(UdpSocket::bind("127.0.0.1:0")?)).collect() })??;
    Ok((ns, socks))
}

/// `write` syscalls made by `pid` so far (`syscw` in /proc/PID/io, summed over its threads).
fn write_calls(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines().find_map(|l| l.strip_prefix("syscw:")).context("syscw")?.trim().parse().context("syscw value")
}

/// True while `pid`'s main thread sleeps in `write(2)` (a full pipe nobody reads).
fn blocked_in_write(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_write)))
}

#[test]
fn sockets_json_fills_a_pipe_with_a_few_writes_not_one_per_line() -> Result<()> {
    require_root();
    let (ns, _socks) = netns_with_sockets()?;
    let mut child = Command::new(ifsock_bin()).args(["--netns", &ns.name, "sockets", "--json"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let pid = child.id();
    // Nobody reads yet: ifsock widens the pipe (1 MiB, or fs.pipe-max-size if lower), fills it
    // and blocks in write.
    wait_until("ifsock blocked writing to a full pipe", Duration::from_secs(60), || blocked_in_write(pid))?;
    let writes = write_calls(pid)?;
    let out = child.stdout.take().context("stdout")?;
    let capacity = nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_GETPIPE_SZ)? as u64;
    let max: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")?.trim().parse()?;
    assert_eq!(capacity, max.min(1 << 20), "stdout pipe buffer");
    let lines = BufReader::new(out).lines().collect::<std::io::Result<Vec<_>>>()?;
    let status = child.wait()?;
    assert!(status.success(), "sockets --json failed: {status}");
    assert!(lines.len() >= 4000, "only {} lines for 4,000 sockets", lines.len());
    let per_line_writes = capacity / lines[0].len().max(1) as u64;
    // Line-buffered output would have needed ~per_line_writes calls to fill the pipe; buffered
    // output writes 64 KiB chunks.
    let chunks = capacity / (64 * 1024);
    assert!(writes <= chunks + 4, "{writes} write calls to fill a {capacity}-byte pipe ({chunks} chunks; one per line would be ~{per_line_writes})");
    Ok(())
}

#[test]
fn sockets_json_into_a_closed_pipe_exits_141_quietly() -> Result<()> {
    require_root();
    let (ns, _socks) = netns_with_sockets()?;
    let mut child = Command::new(ifsock_bin()).args(["--netns", &ns.name, "sockets", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    out.read_line(&mut first)?;
    let v: serde_json::Value = serde_json::from_str(&first).context("first line is JSON")?;
    assert!(v["inode"].is_u64(), "first line: {first}");
    drop(out);
    let output = child.wait_with_output()?;
    assert_eq!(output.status.code(), Some(141), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stderr.is_empty(), "no message on a closed stdout: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}
