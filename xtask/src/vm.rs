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
//! QEMU uses TCG (software emulation, `-cpu max`); set `IFSOCK_VM_KVM=1` to use KVM where it works
//! (on this project's nested build VM /dev/kvm exists but fails to run the guest).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fs::{self, File},
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

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

    let log_path = vm_dir.join("last-run.log");
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

// ---------------------------------------------------------------------------------------------
// Kernel cache

struct CachedKernel {
    vmlinuz: PathBuf,
    modules_dir: PathBuf,
    release: String,
}

fn find_cached_kernel(dir: &Path) -> Option<CachedKernel> {
    let boot = fs::read_dir(dir.join("boot")).ok()?;
    for e in boot.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        for base in ["lib/modules", "usr/lib/modules"] {
            let m = dir.join(base).join(release);
            if m.is_dir() {
                return Some(CachedKernel {
                    vmlinuz: e.path(),
                    modules_dir: m,
                    release: release.to_string(),
                });
            }
        }
    }
    None
}

/// The concrete `linux-image-6.1.*-cloud-amd64` package the metapackage depends on.
fn resolve_kernel_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .context("starting apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image package (stderr: {}); run `apt-get update` (needs Debian bookworm sources)",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

fn ensure_kernel(vm_dir: &Path) -> Result<CachedKernel> {
    let dir = vm_dir.join("kernel");
    if let Some(k) = find_cached_kernel(&dir) {
        return Ok(k);
    }
    let pkg = resolve_kernel_package()?;
    println!(
        "{LOG_PREFIX}downloading {pkg} (once; cached in {})",
        dir.display()
    );
    let dl = vm_dir.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let st = Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&dl)
        .status()
        .context("starting apt-get download")?;
    if !st.success() {
        bail!("`apt-get download {pkg}` failed ({st}); run `apt-get update` and check the network/apt sources");
    }
    let deb = fs::read_dir(&dl)
        .with_context(|| format!("reading {}", dl.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dl.display()))?;
    let partial = vm_dir.join("kernel.partial");
    let _ = fs::remove_dir_all(&partial);
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&partial)
        .status()
        .context("starting dpkg-deb")?;
    if !st.success() {
        bail!(
            "`dpkg-deb -x {} {}` failed ({st})",
            deb.display(),
            partial.display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    let _ = fs::remove_dir_all(&dl);
    find_cached_kernel(&dir).with_context(|| {
        format!(
            "{pkg} unpacked into {} but has no boot/vmlinuz-<rel> with lib/modules/<rel>",
            dir.display()
        )
    })
}

/// The release string in a bzImage's setup header (`kernel_version` field).
fn bzimage_release(path: &Path) -> Result<String> {
    let mut head = vec![0u8; 0x200 + 0x10000 + 256]; // kernel_version is a u16 offset from 0x200
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = read_up_to(&mut f, &mut head)?;
    head.truncate(n);
    if head.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("{} is not a bzImage", path.display());
    }
    let off = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let s = head
        .get(off..)
        .context("kernel_version offset out of range")?;
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Kernel modules

fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name.split(".ko").next()?;
    if !file_name[stem.len()..].starts_with(".ko") {
        return None;
    }
    Some(stem.replace('-', "_"))
}

/// Accepts `lib/modules/<release>` itself or a tree containing exactly one such directory.
fn resolve_modules_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("modules.builtin").is_file() || dir.join("kernel").is_dir() {
        return Ok(dir.to_path_buf());
    }
    for base in ["lib/modules", "usr/lib/modules", ""] {
        let b = dir.join(base);
        let subs: Vec<PathBuf> = fs::read_dir(&b)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("kernel").is_dir())
                    .collect()
            })
            .unwrap_or_default();
        if subs.len() == 1 {
            return Ok(subs[0].clone());
        }
    }
    bail!(
        "modules dir {} has no modules.builtin or kernel/; pass the lib/modules/<release> directory (e.g. from `make modules_install INSTALL_MOD_PATH=...`)",
        dir.display()
    )
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk_files(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Reads a module, decompressing `.xz`/`.gz`/`.zst` with the host's command-line tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "gzip"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "zstd"))
    } else {
        None
    };
    let Some((tool, pkg)) = tool else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| {
            format!(
                "starting `{tool}` to decompress {}; apt-get install -y {pkg}",
                path.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{tool} -dc {}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The NUL-separated `key=value` strings of an ELF64 little-endian object's `.modinfo` section.
fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not an ELF64 little-endian object");
    }
    let bad = || anyhow!("truncated ELF header");
    let shoff = u64_at(0x28).ok_or_else(bad)?;
    let shentsize = u16_at(0x3a).ok_or_else(bad)?;
    let shnum = u16_at(0x3c).ok_or_else(bad)?;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)?;
    let sh = |i: usize| -> Option<(usize, usize, usize)> {
        let b = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(b)?, u64_at(b + 24)?, u64_at(b + 32)?))
    };
    let (_, stroff, strsize) = sh(shstrndx).ok_or_else(|| anyhow!("bad section header table"))?;
    let strtab = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or_else(|| anyhow!("bad .shstrtab"))?;
    for i in 0..shnum {
        let (name, off, size) = sh(i).ok_or_else(|| anyhow!("bad section header {i}"))?;
        let n = strtab.get(name..).unwrap_or_default();
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n != b".modinfo" {
            continue;
        }
        let data = elf
            .get(off..off.saturating_add(size))
            .ok_or_else(|| anyhow!("bad .modinfo bounds"))?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect());
    }
    bail!("no .modinfo section")
}

struct Module {
    name: String,
    data: Vec<u8>,
}

struct ModulePlan {
    /// In load order (dependencies first).
    load: Vec<Module>,
    builtin: Vec<String>,
    missing: Vec<String>,
}

fn plan_modules(modules_dir: &Path, wanted: &[&str]) -> Result<ModulePlan> {
    let dir = resolve_modules_dir(modules_dir)?;
    let builtin: BTreeSet<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect();
    let mut files = Vec::new();
    walk_files(&dir, &mut files)?;
    let index: HashMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|p| {
            let n = module_name(&p.file_name()?.to_string_lossy())?;
            Some((n, p))
        })
        .collect();

    let mut plan = ModulePlan {
        load: Vec::new(),
        builtin: Vec::new(),
        missing: Vec::new(),
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    // Iterative post-order DFS: (name, expanded?).
    for &w in wanted {
        let mut stack = vec![(w.replace('-', "_"), false)];
        let mut loaded: HashMap<String, Vec<u8>> = HashMap::new();
        while let Some((name, expanded)) = stack.pop() {
            if done.contains(&name) {
                continue;
            }
            if builtin.contains(&name) {
                done.insert(name.clone());
                plan.builtin.push(name);
                continue;
            }
            let Some(path) = index.get(&name) else {
                done.insert(name.clone());
                plan.missing.push(name);
                continue;
            };
            if expanded {
                let data = match loaded.remove(&name) {
                    Some(d) => d,
                    None => read_module(path)?,
                };
                done.insert(name.clone());
                plan.load.push(Module { name, data });
                continue;
            }
            let data = read_module(path)?;
            let deps: Vec<String> = modinfo(&data)
                .with_context(|| format!("reading .modinfo of {}", path.display()))?
                .into_iter()
                .filter(|(k, _)| k == "depends")
                .flat_map(|(_, v)| {
                    v.split(',')
                        .map(|d| d.trim().replace('-', "_"))
                        .collect::<Vec<_>>()
                })
                .filter(|d| !d.is_empty())
                .collect();
            loaded.insert(name.clone(), data);
            stack.push((name, true));
            for d in deps.into_iter().rev() {
                if !done.contains(&d) {
                    stack.push((d, false));
                }
            }
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Shared libraries

/// Parses `ldd` output into the absolute paths of the libraries and loader.
fn parse_ldd(out: &str) -> Result<Vec<String>> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.contains("not a dynamic executable")
            || line.contains("statically linked")
        {
            continue;
        }
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                bail!("shared library {} not found on the host", name.trim());
            }
            if let Some(p) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(p.to_string());
            }
        } else if let Some(p) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(p.to_string());
        }
    }
    Ok(libs)
}

/// Shared libraries (and the loader) of `path`; empty for static binaries and non-ELF files.
fn shared_libs(path: &Path) -> Result<Vec<String>> {
    let mut magic = [0u8; 4];
    let n = read_up_to(
        &mut File::open(path).with_context(|| format!("opening {}", path.display()))?,
        &mut magic,
    )?;
    if n < 4 || &magic != b"\x7fELF" {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("starting ldd (apt-get install -y libc-bin)")?;
    // `ldd` exits 1 for static binaries ("not a dynamic executable").
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldd(&text)
        .with_context(|| format!("resolving the shared libraries of {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Initramfs (newc cpio)

/// Validates an absolute guest path and returns it relative to / with merged-/usr applied
/// (`/bin/x` -> `usr/bin/x`), since `/bin`, `/sbin`, `/lib`, `/lib64` are symlinks in the guest.
fn guest_rel(guest: &str) -> Result<String> {
    let Some(rel) = guest.strip_prefix('/') else {
        bail!("guest path {guest:?} is not absolute")
    };
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        bail!("guest path {guest:?} must name a file and contain no `..`");
    }
    let mut rel = parts.join("/");
    for top in ["bin", "sbin", "lib", "lib64"] {
        if parts[0] == top {
            rel = format!("usr/{rel}");
            break;
        }
    }
    if parts[0] == "var" && parts.get(1) == Some(&"run") {
        rel = format!("run/{}", parts[2..].join("/"));
    }
    Ok(rel)
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

struct Cpio<W: Write> {
    w: W,
    ino: u32,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    fn new(w: W) -> Self {
        Cpio {
            w,
            ino: 1,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> Result<()> {
        let size =
            u32::try_from(size).map_err(|_| anyhow!("{name} is larger than 4 GiB (newc limit)"))?;
        let namesize = name.len() + 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.w.write_all(hdr.as_bytes())?;
        self.w.write_all(name.as_bytes())?;
        self.w.write_all(&[0])?;
        self.pad(110 + namesize)?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let p = (4 - len % 4) % 4;
        self.w.write_all(&[0u8; 3][..p])?;
        Ok(())
    }

    fn parents(&mut self, rel: &str) -> Result<()> {
        let mut acc = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if !self.dirs.contains(&acc) {
                let d = acc.clone();
                self.header(&d, S_IFDIR | 0o755, 0, (0, 0))?;
                self.dirs.insert(d);
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &str, perm: u32) -> Result<()> {
        self.parents(rel)?;
        if self.dirs.insert(rel.to_string()) {
            self.header(rel, S_IFDIR | perm, 0, (0, 0))?;
        }
        Ok(())
    }

    fn symlink(&mut self, rel: &str, target: &str) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.w.write_all(target.as_bytes())?;
        self.pad(target.len())?;
        self.dirs.insert(rel.to_string()); // a symlinked dir: never emit it again as a dir
        Ok(())
    }

    fn chardev(&mut self, rel: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFCHR | perm, 0, (major, minor))
    }

    fn bytes(&mut self, rel: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFREG | perm, data.len() as u64, (0, 0))?;
        self.w.write_all(data)?;
        self.pad(data.len())?;
        self.files.insert(rel.to_string());
        Ok(())
    }

    fn host_file(&mut self, rel: &str, perm: u32, host: &Path) -> Result<()> {
        let mut f = File::open(host).with_context(|| format!("opening {}", host.display()))?;
        let len = f.metadata()?.len();
        self.parents(rel)?;
        self.header(rel, S_IFREG | perm, len, (0, 0))?;
        let copied = std::io::copy(&mut (&mut f).take(len), &mut self.w)
            .with_context(|| format!("copying {}", host.display()))?;
        if copied != len {
            bail!("{} changed size while being copied", host.display());
        }
        self.pad(len as usize)?;
        self.files.insert(rel.to_string());
        Ok(())
    }

    /// Copies `host` and, when dynamic, its libraries (skipping ones already present).
    fn host_exe_with_libs(&mut self, guest: &str, host: &Path) -> Result<()> {
        let rel = guest_rel(guest)?;
        self.host_file(&rel, 0o755, host)?;
        for lib in shared_libs(host)? {
            let lrel = guest_rel(&lib)?;
            if !self.files.contains(&lrel) {
                self.host_file(&lrel, 0o755, Path::new(&lib))?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.w)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(modules: &[String], env: &[(String, String)]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
# Generated by xtask/src/vm.rs.
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
mkdir -p /run/netns
hostname ifsock-vm
ulimit -l unlimited 2>/dev/null || true
"#,
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /usr/lib/ifsock-vm/modules/{m}.ko || echo 'ifsock-vm: insmod {m} failed' >&2\n"
        ));
    }
    s.push_str(
        r#"[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
ip link set lo up
echo "IFSOCK-VM-KERNEL=$(uname -r)" > /dev/ttyS1
"#,
    );
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str(
        r#"echo "ifsock-vm: $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s, running the payload script"
cd /
/bin/busybox sh /usr/lib/ifsock-vm/script.sh
rc=$?
echo "IFSOCK-VM-EXIT=$rc" > /dev/ttyS1
echo
echo "IFSOCK-VM-EXIT=$rc"
sync
poweroff -f
echo o > /proc/sysrq-trigger
sleep 5
"#,
    );
    s
}

fn build_initramfs(out: &Path, modules_dir: Option<&Path>, opts: &VmOptions) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut c = Cpio::new(BufWriter::new(file));

    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "usr/local/bin",
        "usr/local/sbin",
        "etc",
        "root",
        "opt",
    ] {
        c.dir(d, 0o755)?;
    }
    for d in ["proc", "sys", "dev", "run", "var", "mnt"] {
        c.dir(d, 0o755)?;
    }
    c.dir("tmp", 0o1777)?;
    c.dir("var/tmp", 0o1777)?;
    for (l, t) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        c.symlink(l, t)?;
    }
    c.chardev("dev/console", 0o600, 5, 1)?;
    c.chardev("dev/null", 0o666, 1, 3)?;
    c.bytes(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    c.bytes("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    c.bytes(
        "etc/hosts",
        0o644,
        b"127.0.0.1 localhost ifsock-vm\n::1 localhost\n",
    )?;
    c.bytes(
        "etc/nsswitch.conf",
        0o644,
        b"passwd: files\ngroup: files\nhosts: files\n",
    )?;

    let busybox = first_existing(BUSYBOX_CANDIDATES)
        .with_context(|| "busybox not found; apt-get install -y busybox-static".to_string())?;
    c.host_exe_with_libs("/usr/bin/busybox", &busybox)?;
    for (guest, candidates, required) in HOST_TOOLS {
        match first_existing(candidates) {
            Some(p) => c.host_exe_with_libs(guest, &p)?,
            None if *required => bail!(
                "{} not found on the host; apt-get install -y iproute2",
                candidates[0]
            ),
            None => {}
        }
    }
    // /bin/sh as on Debian hosts (dash), so `sh -c` from the payload behaves like on the host;
    // without dash, `busybox --install` makes it busybox sh.
    if let Some(dash) = first_existing(&["/usr/bin/dash", "/bin/dash"]) {
        c.host_exe_with_libs("/usr/bin/dash", &dash)?;
        c.symlink("usr/bin/sh", "dash")?;
    }
    if Path::new("/etc/iproute2").is_dir() {
        let mut files = Vec::new();
        walk_files(Path::new("/etc/iproute2"), &mut files)?;
        for f in files {
            c.host_file(&guest_rel(&f.to_string_lossy())?, 0o644, &f)?;
        }
    }

    let mut loaded = Vec::new();
    if let Some(dir) = modules_dir {
        let plan = plan_modules(dir, WANTED_MODULES)?;
        for m in &plan.load {
            c.bytes(
                &format!("usr/lib/ifsock-vm/modules/{}.ko", m.name),
                0o644,
                &m.data,
            )?;
            loaded.push(m.name.clone());
        }
        for r in REQUIRED_MODULES {
            if plan.missing.iter().any(|m| m == r) {
                println!(
                    "{LOG_PREFIX}warning: module {r} is neither built in nor in {}",
                    dir.display()
                );
            }
        }
        println!(
            "{LOG_PREFIX}modules: load [{}], built in [{}], absent [{}]",
            loaded.join(" "),
            plan.builtin.join(" "),
            plan.missing.join(" ")
        );
    }

    c.bytes("init", 0o755, init_script(&loaded, &opts.env).as_bytes())?;
    // busybox-static's sh runs its own applets before $PATH ("prefer applets"), so `ip` in the
    // script would be busybox's; route the iproute2 tools to the real binaries.
    let mut prelude = String::new();
    for (guest, candidates, _) in HOST_TOOLS {
        if first_existing(candidates).is_some() {
            let name = guest.rsplit('/').next().unwrap_or(guest);
            prelude.push_str(&format!("{name}() {{ {guest} \"$@\"; }}; "));
        }
    }
    if first_existing(&["/usr/bin/dash", "/bin/dash"]).is_some() {
        prelude.push_str("sh() { /bin/sh \"$@\"; }; ");
    }
    let script = format!("{prelude}\n{}", opts.script);
    c.bytes("usr/lib/ifsock-vm/script.sh", 0o755, script.as_bytes())?;
    // Payload last, so it may replace anything above; its libraries only fill gaps.
    let mut libs: BTreeMap<String, String> = BTreeMap::new();
    for p in &opts.payload {
        c.host_file(&guest_rel(&p.guest)?, 0o755, &p.host)?;
        for lib in shared_libs(&p.host)? {
            libs.insert(guest_rel(&lib)?, lib);
        }
    }
    for (rel, host) in libs {
        if !c.files.contains(&rel) {
            c.host_file(&rel, 0o755, Path::new(&host))?;
        }
    }
    let mut w = c.finish()?;
    w.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// QEMU

struct Console {
    text: String,
    tail: String,
    status: String,
}

/// KVM only on request (`IFSOCK_VM_KVM=1`): /dev/kvm may exist in a nested VM whose KVM cannot
/// run this kernel (seen: "KVM internal error ... emulation failure", QEMU then hangs paused).
fn kvm_requested() -> bool {
    std::env::var_os("IFSOCK_VM_KVM").is_some_and(|v| v == "1")
}

fn boot(
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

fn forward_lines(r: impl Read, prefix: &str, tx: &mpsc::Sender<String>) {
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
fn find_marker(text: &str, marker: &str) -> Option<String> {
    let pos = text.rfind(marker)?;
    let v: String = text[pos + marker.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn have(cmd: &str) -> bool {
        which(cmd).is_some()
    }

    /// Boots the real kernel: ~30 s per boot under TCG, downloads ~27 MB the first time.
    #[test]
    #[ignore = "boots QEMU; run with `cargo test -p xtask -- --ignored --nocapture`"]
    fn boots_debian_kernel() {
        if !have("qemu-system-x86_64") || !have("gcc") {
            eprintln!("SKIPPED: needs qemu-system-x86_64 and gcc (vm::ensure_host_packages / apt-get install gcc)");
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let work = root.join("target").join("vm").join("selftest");
        fs::create_dir_all(&work).unwrap();
        let src = work.join("hello.c");
        fs::write(&src, "#include <stdio.h>\n#include <stdlib.h>\nint main(int c,char**v){printf(\"hello from %s\\n\",v[0]);return c>1?atoi(v[1]):0;}\n").unwrap();
        for (out, extra) in [("hello-static", vec!["-static"]), ("hello-dyn", vec![])] {
            let st = Command::new("gcc")
                .args(&extra)
                .arg("-O1")
                .arg("-o")
                .arg(work.join(out))
                .arg(&src)
                .status()
                .unwrap();
            assert!(st.success(), "gcc {out}");
        }
        let script = r#"set -e
uname -a
test -e /sys/kernel/btf/vmlinux && echo CHECK btf ok
test -e /sys/bus/event_source/devices/kprobe/type && echo CHECK kprobe pmu ok
grep -q ip_rcv /sys/kernel/tracing/available_filter_functions && echo CHECK ftrace ok
ls -l /bin/sh
sh -c 'ip -V' | grep -q iproute2 && echo CHECK sh-c ip ok
echo 'p:ifsock_probe ip_rcv' > /sys/kernel/tracing/kprobe_events && echo CHECK kprobe_events ok
mount -t securityfs securityfs /sys/kernel/security && cat /sys/kernel/security/lockdown
test -c /dev/net/tun && echo CHECK tun ok
ip -V | grep -q iproute2 && echo CHECK iproute2 ok
ip link add t0 type veth peer name t1 && echo CHECK veth ok
ip netns add x && echo CHECK netns ok
ip link set t1 netns x
ip -n x link set t1 up
ip -n x -br link
ip link add d0 type dummy && ip link add br0 type bridge && ip link set d0 master br0 && echo CHECK dummy+bridge ok
ip tuntap add tap0 mode tap && echo CHECK tuntap ok
tc qdisc add dev t0 clsact && echo CHECK clsact ok
ss -tln >/dev/null && echo CHECK ss ok
/opt/selftest/hello-static 0
/opt/selftest/hello-dyn 0
[ "$IFSOCK_GREETING" = "it's ok" ] && echo CHECK env ok
lsmod
"#;
        let payload = vec![
            Payload {
                host: work.join("hello-static"),
                guest: "/opt/selftest/hello-static".into(),
            },
            Payload {
                host: work.join("hello-dyn"),
                guest: "/opt/selftest/hello-dyn".into(),
            },
        ];
        let t = Instant::now();
        let out = run(
            &root,
            &VmOptions {
                kernel: None,
                modules_dir: None,
                payload,
                script: script.into(),
                timeout: Duration::from_secs(300),
                env: vec![("IFSOCK_GREETING".into(), "it's ok".into())],
            },
        )
        .unwrap();
        eprintln!(
            "boot+run took {:.1} s, kernel {}",
            t.elapsed().as_secs_f64(),
            out.kernel_release
        );
        assert_eq!(out.exit_code, 0, "see {}", out.log_path.display());
        assert!(
            out.kernel_release.starts_with("6.1."),
            "{}",
            out.kernel_release
        );
        let log = fs::read_to_string(&out.log_path).unwrap();
        for c in [
            "btf",
            "kprobe pmu",
            "kprobe_events",
            "ftrace",
            "sh-c ip",
            "tun",
            "veth",
            "netns",
            "dummy+bridge",
            "tuntap",
            "clsact",
            "ss",
            "env",
            "iproute2",
        ] {
            assert!(log.contains(&format!("CHECK {c} ok")), "missing check {c}");
        }
        assert!(log.contains("hello from /opt/selftest/hello-dyn"));

        let t = Instant::now();
        let opts = |script: &str, secs| VmOptions {
            kernel: None,
            modules_dir: None,
            payload: vec![],
            script: script.into(),
            timeout: Duration::from_secs(secs),
            env: vec![],
        };
        let out = run(&root, &opts("echo exiting; exit 3", 300)).unwrap();
        eprintln!("exit-3 run took {:.1} s", t.elapsed().as_secs_f64());
        assert_eq!(out.exit_code, 3);

        // A custom kernel + modules tree (here: the cached Debian one, given explicitly).
        let kdir = root.join("target/vm/kernel");
        let k = find_cached_kernel(&kdir).unwrap();
        assert_eq!(bzimage_release(&k.vmlinuz).unwrap(), k.release);
        let mut o = opts("lsmod | grep -q veth && exit 7", 300);
        o.kernel = Some(k.vmlinuz.clone());
        o.modules_dir = Some(kdir);
        assert_eq!(run(&root, &o).unwrap().exit_code, 7);

        // The guest going away without the marker is an error, not an exit code.
        let err = run(&root, &opts("poweroff -f", 300))
            .err()
            .expect("no exit code");
        assert!(format!("{err:#}").contains("without reporting"), "{err:#}");

        let t = Instant::now();
        let err = run(&root, &opts("sleep 1000", 20))
            .err()
            .expect("must time out");
        eprintln!("timeout run took {:.1} s", t.elapsed().as_secs_f64());
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        eprintln!("timeout error:\n{err:#}");
    }
}
