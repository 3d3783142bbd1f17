//! Booting QEMU and following its console until `/init` reports the exit code.
use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{EXIT_MARKER, KERNEL_MARKER, LOG_PREFIX};

// ---------------------------------------------------------------------------------------------
// QEMU

pub(super) struct Console {
    pub(super) text: String,
    pub(super) tail: String,
    pub(super) status: String,
}

/// The guest kernel's command line.
///
/// `watchdog_thresh=60`: the soft-lockup detector fires when a CPU has not scheduled for
/// 2 × watchdog_thresh s (default 10, so 20 s). The lockups seen in CI were not emulation speed
/// but multi-threaded TCG (see [`TCG_ACCEL`]); with that fixed, the higher threshold is only a
/// margin for a host so loaded that the one emulation thread is not run for tens of seconds
/// (text patching measured in the guest under host load 5-9: median 0.3 ms, max 33 ms per
/// `text_poke_bp_batch`). `softlockup_panic` (set by /init) still ends any lockup loudly with
/// every CPU's stack, and the tests' own bounds (60 s per awaited line) and the 40-minute VM
/// timeout catch any hang regardless. There is no second boot: a lockup fails the run.
pub(super) const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init mitigations=off watchdog_thresh=60";

/// TCG with one emulation thread for both vCPUs (`thread=single`), not QEMU's default
/// multi-threaded TCG (one host thread per vCPU).
///
/// Why (Dec 2026, QEMU 7.2 from Debian 12, guest Debian 6.1.0-57-cloud): under multi-threaded
/// TCG a vCPU can keep executing a stale translation of kernel text that another vCPU has just
/// patched. Flipping a static key patches with the int3 protocol (`text_poke_bp_batch`: write
/// `int3`, sync, write the tail, sync, write the first byte). A vCPU that still runs the old
/// translation traps on an `int3` that memory no longer holds; 6.1's `kprobe_int3_handler`
/// ("the breakpoint instruction was removed right after we hit it") backs `ip` up over it and
/// returns, and the stale `int3` traps again, forever: the soft lockup CI saw twice, both
/// vCPUs at `syscall_trace_enter+0xe9` (the `sys_enter` tracepoint's jump label, memory
/// already holding the new `eb 63`) or in `asm_exc_int3`. (Kernels from 6.8 dropped that
/// rewind; there the same stale `int3` would oops instead.)
/// Reproduced without ifsock: busybox in the guest toggling
/// `events/syscalls/sys_enter_openat/enable` while `dd bs=1` runs on each vCPU locked up
/// within the first 200 toggles in 4 of 5 boots with the default accelerator (the fifth went
/// silent), and never with `thread=single` (see docs/testing.md for the runs). The cost is
/// emulation parallelism (the two vCPUs share one host thread); the suite took 521 s of guest
/// time, no slower than before.
pub(super) const TCG_ACCEL: &str = "tcg,thread=single";

/// KVM only on request (`IFSOCK_VM_KVM=1`): /dev/kvm may exist in a nested VM whose KVM cannot
/// run this kernel (seen: "KVM internal error ... emulation failure", QEMU then hangs paused).
pub(super) fn kvm_requested() -> bool {
    std::env::var_os("IFSOCK_VM_KVM").is_some_and(|v| v == "1")
}

pub(super) fn boot(
    kernel: &Path,
    initrd: &Path,
    log_path: &Path,
    result_path: &Path,
    timeout: Duration,
) -> Result<Console> {
    let _ = fs::remove_file(result_path);
    let mut log = BufWriter::new(
        File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?,
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    if kvm_requested() {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", TCG_ACCEL, "-cpu", "max"]);
    }
    cmd.args([
        "-m",
        "2048",
        "-smp",
        "2",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-serial", "stdio"])
    .arg("-serial")
    .arg(format!("file:{}", result_path.display()))
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", KERNEL_CMDLINE])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let _ = writeln!(log, "# {cmd:?}");
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64; apt-get install -y qemu-system-x86")?;

    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(thread::spawn(move || forward_lines(out, "", &tx)));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(thread::spawn(move || forward_lines(err, "qemu: ", &tx)));
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut text = String::new();
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                {
                    let mut so = std::io::stdout().lock();
                    let _ = writeln!(so, "{LOG_PREFIX}{line}");
                    let _ = so.flush();
                }
                let _ = writeln!(log, "{line}");
                let _ = log.flush();
                if line.contains(EXIT_MARKER) || line.contains(KERNEL_MARKER) {
                    text.push_str(&line);
                    text.push('\n');
                }
                tail.push_back(line);
                if tail.len() > 40 {
                    tail.pop_front();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    for r in readers {
        let _ = r.join();
    }
    let _ = log.flush();
    let tail: Vec<String> = tail.into_iter().collect();
    let tail = tail.join("\n");
    if timed_out {
        bail!(
            "VM timed out after {:.0} s (QEMU killed); raise VmOptions::timeout if the payload is slow. Full log: {}\n--- last console lines ---\n{tail}",
            timeout.as_secs_f64(),
            log_path.display()
        );
    }
    Ok(Console {
        text,
        tail,
        status: format!("qemu {status}"),
    })
}

pub(super) fn forward_lines(r: impl Read, prefix: &str, tx: &mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let s = String::from_utf8_lossy(&buf);
                let s = s.trim_end_matches(['\n', '\r']).replace('\r', "");
                if tx.send(format!("{prefix}{s}")).is_err() {
                    return;
                }
            }
        }
    }
}

/// The value after the last `marker` in `text` (up to whitespace), tolerating console noise
/// before the marker on the same line.
pub(super) fn find_marker(text: &str, marker: &str) -> Option<String> {
    let pos = text.rfind(marker)?;
    let v: String = text[pos + marker.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!v.is_empty()).then_some(v)
}
