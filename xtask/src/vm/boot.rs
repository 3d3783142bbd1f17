//! Booting QEMU and following its console until `/init` reports the exit code.
use super::*;

// ---------------------------------------------------------------------------------------------
// QEMU

pub(super) struct Console {
    pub(super) text: String,
    pub(super) tail: String,
    pub(super) status: String,
}

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
    .args([
        "-append",
        "console=ttyS0 panic=-1 quiet rdinit=/init mitigations=off",
    ])
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
