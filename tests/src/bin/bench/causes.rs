//! The send-path cost of `agent --causes` on a kernel that refuses fentry and kprobes: the
//! agent attaches `syscalls:sys_enter_{sendmsg,sendto,ioctl}`, which run on every such call of
//! the host. The loopback UDP round trip of the `recv` group (one `sendto` per side) with no
//! agent, with `agent` (no probe on the send path), and with `agent --causes`, interleaved in
//! one loop, the fastest of 7 runs of 20,000 round trips each; CPU time of both threads.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::ifsock_bin;

use crate::{recv::rtt_loop, util::Row};

/// An agent on a free loopback port with a journal of its own, killed on drop.
struct Agent {
    child: Child,
    dir: std::path::PathBuf,
}

impl Agent {
    fn start(causes: bool) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ifsock-bench-causes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cmd = Command::new(ifsock_bin());
        cmd.args(["agent", "--listen", "127.0.0.1:0", "--journal"]).arg(&dir).stdout(Stdio::null()).stderr(Stdio::piped());
        if causes {
            cmd.arg("--causes");
        }
        let mut child = cmd.spawn().context("starting ifsock agent")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("agent: serving") => break,
                Some(_) => continue,
                None => bail!("the agent exited before serving: {:?}", child.try_wait()),
            }
        }
        // Drained on a thread: a full pipe would block the agent's log.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Agent { child, dir })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let n = 20_000;
    rtt_loop(2_000)?;
    let (mut base, mut agent, mut causes) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for round in 0..7 {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => base = base.min(rtt_loop(n)?),
                1 => {
                    let _a = Agent::start(false)?;
                    agent = agent.min(rtt_loop(n)?);
                }
                _ => {
                    let _a = Agent::start(true)?;
                    causes = causes.min(rtt_loop(n)?);
                }
            }
        }
    }
    rows.push(Row {
        name: "send path: loopback UDP round trip (2 sendto) under `agent`".into(),
        ifsock: format!("{agent:.0} ns CPU ({:+.0} ns per send)", (agent - base) / 2.0),
        baseline: format!("{base:.0} ns CPU without an agent"),
        ratio: Some(agent / base),
        // No probe on the send path: what differs is the agent's presence on a shared machine.
        target: "— (reference: no probe on the send path)".into(),
        met: None,
        rss_kib: None,
    });
    rows.push(Row {
        name: "send path: loopback UDP round trip (2 sendto) under `agent --causes` (syscall tracepoints)".into(),
        ifsock: format!("{causes:.0} ns CPU ({:+.0} ns per send)", (causes - base) / 2.0),
        baseline: format!("{base:.0} ns CPU without an agent"),
        ratio: Some(causes / base),
        target: "— (the cost --causes documents)".into(),
        met: None,
        rss_kib: None,
    });
    Ok(())
}
