//! Boots a full Debian kernel under QEMU and runs a payload in it.
//!
//! The host kernel may forbid what the privileged integration tests need (fentry under lockdown,
//! kprobes), so `cargo xtask vm-test` runs them in a VM: Debian 12's `linux-image-cloud-amd64`
//! (6.1, with BTF, kprobes and fentry) booted by `qemu-system-x86_64` with an initramfs that holds
//! busybox-static, iproute2's `ip`/`tc`/`ss` with their shared libraries, the network modules and
//! the payload files (with their shared libraries when dynamic).
//!
//! Layout under `<workspace>/target/vm/`:
//! - `kernel/`: the unpacked kernel package (`boot/vmlinuz-*`, `lib/modules/<release>/`); delete
//!   it to fetch a newer kernel.
//! - `initramfs.cpio`: the last initramfs built (uncompressed newc cpio).
//! - `last-run.log`: the console (and QEMU's stderr) of the last run.
//! - `result.txt`: what `/init` reported on the second serial port (exit code, kernel release).
//! - `.lock`: serialises runs in one workspace.
//!
//! QEMU uses single-threaded TCG (software emulation, `-cpu max`; why single: `boot::TCG_ACCEL`); set `IFSOCK_VM_KVM=1` to use KVM where it works
//! (on this project's nested build VM /dev/kvm exists but fails to run the guest).

mod boot;
mod initramfs;
mod kernel;

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use boot::{boot, find_marker};
use initramfs::{build_initramfs, guest_rel};
use kernel::{bzimage_release, ensure_kernel};

/// One file copied into the guest: host path -> absolute guest path (made executable).
///
/// When `host` is a dynamically linked executable its shared libraries (as reported by the host's
/// `ldd`) and the dynamic loader are copied into the guest at the same paths. `guest` must be
/// absolute, without `..`, and not under `/tmp`, `/run`, `/proc`, `/sys` or `/dev` (those are
/// mounted over at boot).
pub struct Payload {
    pub host: std::path::PathBuf,
    pub guest: String,
}

/// What to boot and what to run in the guest.
pub struct VmOptions {
    /// A vmlinuz to boot instead of Debian's cloud kernel; its modules then come from `modules_dir` if given.
    ///
    /// `modules_dir` is a `lib/modules/<release>` directory (or a tree containing exactly one
    /// such directory). Without it, a custom kernel must have veth/tun built in.
    pub kernel: Option<std::path::PathBuf>,
    pub modules_dir: Option<std::path::PathBuf>,
    pub payload: Vec<Payload>,
    /// Shell script (busybox sh) run by /init after setup, with cwd /; its exit status becomes the VM's result.
    ///
    /// `PATH` is `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`. `ip`, `tc`, `ss`
    /// are iproute2's (copied from the host) and `/bin/sh` is the host's dash, as on a Debian host;
    /// every other command is busybox. busybox-static's sh prefers its own applets over `$PATH`,
    /// so the script gets shell functions routing `ip`, `tc`, `ss` and `sh` to those binaries
    /// (one line is prepended: error line numbers are off by one). Programs in the payload exec
    /// through `$PATH` and are unaffected. `/bin`, `/sbin`, `/lib`, `/lib64` are symlinks into
    /// `/usr` as on the host; `/var/run` links to `/run`.
    pub script: String,
    /// Wall-clock limit for the whole boot + script + poweroff; QEMU is killed when it expires.
    pub timeout: std::time::Duration,
    /// Extra environment exported before the script runs.
    ///
    /// Names must be shell identifiers (`[A-Za-z_][A-Za-z0-9_]*`); values are passed verbatim.
    pub env: Vec<(String, String)>,
}

/// Result of a VM run whose script completed.
pub struct VmOutcome {
    /// Exit status of `VmOptions::script` (0..=255; 128+N when killed by signal N).
    pub exit_code: i32,
    /// The console log of this run (`target/vm/last-run.log`).
    pub log_path: std::path::PathBuf,
    /// `uname -r` inside the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
}

/// The Debian metapackage whose dependency names the concrete cloud kernel package.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Modules loaded at boot when they exist and are not built in (dependencies are added).
/// veth and tun are what the tests need; the rest are cheap extras for link types and tc.
const WANTED_MODULES: &[&str] = &[
    "veth",
    "tun",
    "dummy",
    "bridge",
    "macvlan",
    "ipvlan",
    "vxlan",
    "8021q",
    "ifb",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    // NETLINK_SOCK_DIAG handlers for `abort` (SOCK_DESTROY) and its cookie dumps.
    "inet_diag",
    "udp_diag",
    "tcp_diag",
];
/// Modules whose absence is reported as a warning (the tests will fail without them).
const REQUIRED_MODULES: &[&str] = &["veth", "tun"];

/// iproute2 tools copied into the guest (guest path, host candidates, required).
const HOST_TOOLS: &[(&str, &[&str], bool)] = &[
    (
        "/usr/sbin/ip",
        &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"],
        true,
    ),
    ("/usr/sbin/tc", &["/usr/sbin/tc", "/sbin/tc"], false),
    (
        "/usr/bin/ss",
        &["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss"],
        false,
    ),
];

const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Marker printed on the console by `/init` (and on the result port): `IFSOCK-VM-EXIT=<code>`.
const EXIT_MARKER: &str = "IFSOCK-VM-EXIT=";
const KERNEL_MARKER: &str = "IFSOCK-VM-KERNEL=";
const LOG_PREFIX: &str = "vm| ";

/// Ensures the kernel is cached, builds the initramfs, boots QEMU, streams the console, returns the script's exit code.
///
/// The console is printed to stdout (lines prefixed with `vm| `) while the guest runs and saved
/// to `target/vm/last-run.log`. The first run downloads the kernel package (~27 MB) with
/// `apt-get download` into `target/vm/kernel/`; later runs reuse it. Runs in one workspace are
/// serialised by a lock file.
///
/// Errors: missing host tools (fix: [`ensure_host_packages`]), kernel download/unpack failures,
/// invalid payload paths or env names, QEMU failing to start, the guest not reporting an exit code
/// (kernel panic, `/init` crash), or the timeout expiring; the last two include the tail of the
/// console log. A non-zero script exit status is NOT an error: it is in [`VmOutcome::exit_code`].
pub fn run(workspace_root: &std::path::Path, opts: &VmOptions) -> anyhow::Result<VmOutcome> {
    let vm_dir = workspace_root.join("target").join("vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let lock_path = vm_dir.join(".lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| {
        format!(
            "locking {} (another VM run in this workspace?)",
            lock_path.display()
        )
    })?;

    check_host_tools()?;
    validate_options(opts)?;

    let (kernel_image, modules_dir, release_hint) = match &opts.kernel {
        Some(k) => {
            if !k.is_file() {
                bail!(
                    "VmOptions::kernel {} is not a file; pass a bzImage/vmlinuz",
                    k.display()
                );
            }
            (k.clone(), opts.modules_dir.clone(), bzimage_release(k).ok())
        }
        None => {
            let k = ensure_kernel(&vm_dir)?;
            (
                k.vmlinuz,
                Some(opts.modules_dir.clone().unwrap_or(k.modules_dir)),
                Some(k.release),
            )
        }
    };

    let initrd = vm_dir.join("initramfs.cpio");
    build_initramfs(&initrd, modules_dir.as_deref(), opts)
        .with_context(|| format!("building the initramfs {}", initrd.display()))?;

    let log_path = last_run_log(workspace_root);
    let result_path = vm_dir.join("result.txt");
    let started = Instant::now();
    let console = boot(
        &kernel_image,
        &initrd,
        &log_path,
        &result_path,
        opts.timeout,
    )?;
    let elapsed = started.elapsed();

    let result_text = fs::read(&result_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let exit_code = find_marker(&result_text, EXIT_MARKER)
        .or_else(|| find_marker(&console.text, EXIT_MARKER))
        .and_then(|v| v.parse::<i32>().ok());
    let Some(exit_code) = exit_code else {
        bail!(
            "the guest stopped without reporting the script's exit code ({}; no `{EXIT_MARKER}` line: kernel panic, /init failure or the script powered off the VM itself). Full log: {}\n--- last console lines ---\n{}",
            console.status,
            log_path.display(),
            console.tail
        );
    };
    let kernel_release = find_marker(&result_text, KERNEL_MARKER)
        .or_else(|| find_marker(&console.text, KERNEL_MARKER))
        .or(release_hint)
        .unwrap_or_default();
    println!(
        "{LOG_PREFIX}guest {kernel_release} finished in {:.1} s with exit code {exit_code}",
        elapsed.as_secs_f64()
    );
    Ok(VmOutcome {
        exit_code,
        log_path,
        kernel_release,
    })
}

/// The release of the kernel [`run`] boots for `kernel`: the `kernel_version` of its bzImage
/// header, else Debian's cloud kernel (downloaded into `target/vm/kernel/` on first use, like
/// [`run`] does). Known before boot, so that the caller can pick the guest's expectations.
pub fn guest_release(workspace_root: &Path, kernel: Option<&Path>) -> Result<String> {
    if let Some(k) = kernel {
        return bzimage_release(k);
    }
    let vm_dir = workspace_root.join("target").join("vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let lock = File::create(vm_dir.join(".lock")).context("creating target/vm/.lock")?;
    lock.lock().context("locking target/vm/.lock (another VM run in this workspace?)")?;
    Ok(ensure_kernel(&vm_dir)?.release)
}

/// The console log [`run`] writes (`target/vm/last-run.log`), also when it returns an error.
pub fn last_run_log(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("vm").join("last-run.log")
}

/// The soft lockup report(s) in a guest console log, if the guest hit one: each `BUG: soft lockup`
/// line with the registers and call trace printed after it (up to 60 lines each, at most three
/// reports). `None` when the log has no soft lockup or cannot be read.
pub fn soft_lockup(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, _) in lines.iter().enumerate().filter(|(_, l)| l.contains("BUG: soft lockup")).take(3) {
        out.extend(lines[i..].iter().take(60).copied());
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

/// Installs (apt-get) qemu-system-x86, busybox-static, cpio, xz-utils when missing; idempotent.
///
/// Actually checked/installed: `qemu-system-x86`, `busybox-static`, `xz-utils`, `iproute2`
/// (`cpio` is not needed: the initramfs is written in Rust). Does nothing when all are installed.
/// Errors: packages missing and not running as root (the message has the `apt-get` command to
/// run), or `apt-get` failing (retried once after `apt-get update`).
pub fn ensure_host_packages() -> anyhow::Result<()> {
    const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils", "iproute2"];
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmdline = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing host packages for the VM tests: {}; run as root: {cmdline}",
            missing.join(", ")
        );
    }
    let install = || -> Result<bool> {
        let st = Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("starting apt-get (is this a Debian/Ubuntu host?)")?;
        Ok(st.success())
    };
    if install()? {
        return Ok(());
    }
    let st = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get update")?;
    if !st.success() || !install()? {
        bail!(
            "`{cmdline}` failed (also after `apt-get update`); check the apt sources and network"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Host checks and options

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn check_host_tools() -> Result<()> {
    let fix = "call vm::ensure_host_packages() or run as root: apt-get install -y qemu-system-x86 busybox-static xz-utils iproute2";
    if which("qemu-system-x86_64").is_none() {
        bail!("qemu-system-x86_64 not found; {fix}");
    }
    if first_existing(BUSYBOX_CANDIDATES).is_none() {
        bail!(
            "busybox not found (looked at {}); {fix}",
            BUSYBOX_CANDIDATES.join(", ")
        );
    }
    for tool in ["ldd", "dpkg-deb", "apt-get", "apt-cache"] {
        if which(tool).is_none() {
            bail!("`{tool}` not found on the host; the VM runner needs a Debian-like host (libc-bin, dpkg, apt)");
        }
    }
    Ok(())
}

fn validate_options(opts: &VmOptions) -> Result<()> {
    for (k, _) in &opts.env {
        let ok = !k.is_empty()
            && k.chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !ok {
            bail!("VmOptions::env name {k:?} is not a shell identifier ([A-Za-z_][A-Za-z0-9_]*)");
        }
    }
    for p in &opts.payload {
        let rel = guest_rel(&p.guest)
            .with_context(|| format!("payload {} -> {:?}", p.host.display(), p.guest))?;
        let first = rel.split('/').next().unwrap_or("");
        if ["tmp", "run", "proc", "sys", "dev"].contains(&first) {
            bail!(
                "payload guest path {:?} is under /{first}, which /init mounts over; use e.g. /opt/ifsock/...",
                p.guest
            );
        }
        if !p.host.is_file() {
            bail!(
                "payload host file {} does not exist (build it first)",
                p.host.display()
            );
        }
    }
    if opts.timeout.is_zero() {
        bail!("VmOptions::timeout is zero");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    // The runner's end-to-end test is `cargo xtask vm-test` itself, run by .ci/run: it boots
    // this kernel and fails on a missing exit marker, a timeout, a guest soft lockup, a failing
    // doctor, zero test binaries or a binary without its `test result:` line. A separate boot
    // test here (five boots, ~30 s each under TCG on an idle machine, plus gcc) was `#[ignore]`d
    // and so never ran; the pieces below run in every `cargo xtask test`.
    use std::fs;

    use super::{
        boot::find_marker,
        initramfs::{guest_rel, parse_ldd, shell_quote, Cpio},
        kernel::module_name,
        soft_lockup, EXIT_MARKER,
    };

    #[test]
    fn a_soft_lockup_is_found_with_its_stack_and_a_clean_log_is_not() {
        let dir = std::env::temp_dir().join(format!("xtask-lockup-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("console.log");
        fs::write(&log, "vm| test a ... ok\nvm| IFSOCK-VM-EXIT=0\n").unwrap();
        assert_eq!(soft_lockup(&log), None);
        fs::write(
            &log,
            "vm| test a ... ok\n[ 284.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [ifsock:868]\n[ 284.1] RIP: 0010:text_poke_bp_batch+0x1/0x2\n[ 284.1] Call Trace:\n",
        )
        .unwrap();
        let report = soft_lockup(&log).expect("a soft lockup");
        assert!(report.starts_with("[ 284.1] watchdog: BUG: soft lockup"), "{report}");
        assert!(report.contains("RIP: 0010:text_poke_bp_batch"), "{report}");
        assert!(!report.contains("test a"), "{report}");
        assert_eq!(soft_lockup(&dir.join("missing.log")), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_paths() {
        assert_eq!(guest_rel("/bin/x").unwrap(), "usr/bin/x");
        assert_eq!(
            guest_rel("/lib64/ld-linux-x86-64.so.2").unwrap(),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(guest_rel("/opt//a/./b").unwrap(), "opt/a/b");
        assert_eq!(guest_rel("/var/run/x").unwrap(), "run/x");
        assert!(guest_rel("opt/x").is_err());
        assert!(guest_rel("/opt/../x").is_err());
        assert!(guest_rel("/").is_err());
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn markers_and_quoting() {
        assert_eq!(
            find_marker("[  1.2] x IFSOCK-VM-EXIT=3\r\n", EXIT_MARKER).as_deref(),
            Some("3")
        );
        assert_eq!(
            find_marker("IFSOCK-VM-EXIT=1\nIFSOCK-VM-EXIT=0\n", EXIT_MARKER).as_deref(),
            Some("0")
        );
        assert_eq!(find_marker("nothing", EXIT_MARKER), None);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(module_name("veth.ko.xz").as_deref(), Some("veth"));
        assert_eq!(
            module_name("sch-ingress.ko").as_deref(),
            Some("sch_ingress")
        );
        assert_eq!(module_name("README"), None);
    }

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::new(Vec::new());
        c.bytes("a/b", 0o644, b"xyz").unwrap();
        let out = c.finish().unwrap();
        // dir "a", file "a/b", trailer; every record 4-aligned.
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        assert_eq!(s.matches("070701").count(), 3);
        assert!(s.contains("a/b\0"));
        assert!(s.contains("xyz"));
        assert!(s.contains("TRAILER!!!\0"));
    }
}
