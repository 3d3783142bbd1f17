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
/// 2 × watchdog_thresh s (default 10, so 20 s). Attaching fentry or kprobes patches kernel text
/// through `text_poke_bp_batch`, which IPIs every other CPU and waits for each to run
/// `do_sync_core` (`text_poke_sync` → `on_each_cpu(…, wait=1)`, three times per batch) with
/// preemption disabled; under TCG each vCPU is a host thread, and sending an IPI is an APIC write
/// that QEMU emulates under its global lock. The two earlier lockups were reported there (RIP in
/// `text_poke_bp_batch` while probes attached, 2 of 9 full runs, never on the host kernel, never
/// repeated by a rerun). Measured (function_graph on `text_poke_bp_batch`, max_graph_depth 1, in
/// the 6.1 guest, kernel_probes + abort twice, host load average 5-9 on 2 cores, Dec 2026): 577
/// batches, median 0.3 ms, p90 16 ms, p99 25 ms, max 33 ms; with the full call graph one
/// `flat_send_IPI_mask` alone took 4.5 ms. Ordinary emulation speed is thus ~600× below 20 s:
/// a lockup there needs a vCPU thread the host did not run for tens of seconds (an overloaded
/// host), or an IPI never delivered (a real hang, which this setting does not hide). 60, the
/// maximum (120 s), tolerates the first; `softlockup_panic` (set by /init) still ends the second
/// loudly with every CPU's stack, and the tests' own bounds (60 s per awaited line) and the
/// 40-minute VM timeout catch any hang regardless. There is no second boot: a lockup fails the run.
pub(super) const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init mitigations=off watchdog_thresh=60";

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
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
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
