//! The initramfs: busybox, iproute2 tools and payload files with their shared libraries
//! (`ldd`), the modules, and the `/init` script, written as a newc cpio.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufWriter, Read, Write},
    path::Path,
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{
    first_existing,
    kernel::{plan_modules, read_up_to, walk_files},
    VmOptions, BUSYBOX_CANDIDATES, HOST_TOOLS, LOG_PREFIX, REQUIRED_MODULES, WANTED_MODULES,
};

// ---------------------------------------------------------------------------------------------
// Shared libraries

/// Parses `ldd` output into the absolute paths of the libraries and loader.
pub(super) fn parse_ldd(out: &str) -> Result<Vec<String>> {
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
pub(super) fn shared_libs(path: &Path) -> Result<Vec<String>> {
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
pub(super) fn guest_rel(guest: &str) -> Result<String> {
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

pub(super) const S_IFDIR: u32 = 0o040000;
pub(super) const S_IFREG: u32 = 0o100000;
pub(super) const S_IFLNK: u32 = 0o120000;
pub(super) const S_IFCHR: u32 = 0o020000;

pub(super) struct Cpio<W: Write> {
    pub(super) w: W,
    pub(super) ino: u32,
    pub(super) dirs: BTreeSet<String>,
    pub(super) files: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    pub(super) fn new(w: W) -> Self {
        Cpio {
            w,
            ino: 1,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    pub(super) fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> Result<()> {
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

    pub(super) fn pad(&mut self, len: usize) -> Result<()> {
        let p = (4 - len % 4) % 4;
        self.w.write_all(&[0u8; 3][..p])?;
        Ok(())
    }

    pub(super) fn parents(&mut self, rel: &str) -> Result<()> {
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

    pub(super) fn dir(&mut self, rel: &str, perm: u32) -> Result<()> {
        self.parents(rel)?;
        if self.dirs.insert(rel.to_string()) {
            self.header(rel, S_IFDIR | perm, 0, (0, 0))?;
        }
        Ok(())
    }

    pub(super) fn symlink(&mut self, rel: &str, target: &str) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.w.write_all(target.as_bytes())?;
        self.pad(target.len())?;
        self.dirs.insert(rel.to_string()); // a symlinked dir: never emit it again as a dir
        Ok(())
    }

    pub(super) fn chardev(&mut self, rel: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFCHR | perm, 0, (major, minor))
    }

    pub(super) fn bytes(&mut self, rel: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parents(rel)?;
        self.header(rel, S_IFREG | perm, data.len() as u64, (0, 0))?;
        self.w.write_all(data)?;
        self.pad(data.len())?;
        self.files.insert(rel.to_string());
        Ok(())
    }

    pub(super) fn host_file(&mut self, rel: &str, perm: u32, host: &Path) -> Result<()> {
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
    pub(super) fn host_exe_with_libs(&mut self, guest: &str, host: &Path) -> Result<()> {
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

    pub(super) fn finish(mut self) -> Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.w)
    }
}

pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub(super) fn init_script(modules: &[String], env: &[(String, String)]) -> String {
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
# `quiet` leaves the console at log level 4, which hides the registers and call trace of a soft
# lockup (printed at KERN_DEFAULT); 5 shows them and still hides KERN_INFO chatter. A soft lockup
# backtraces every CPU and panics, so a deadlocked guest ends at once with its stacks in the log
# instead of at the VM timeout.
echo 5 > /proc/sys/kernel/printk
echo 1 > /proc/sys/kernel/softlockup_all_cpu_backtrace 2>/dev/null || true
echo 1 > /proc/sys/kernel/softlockup_panic 2>/dev/null || true
# watchdog_thresh is set on the kernel command line for emulation (xtask/src/vm/boot.rs).
echo "ifsock-vm: soft lockup panics after 2 x $(cat /proc/sys/kernel/watchdog_thresh) s"
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

pub(super) fn build_initramfs(out: &Path, modules_dir: Option<&Path>, opts: &VmOptions) -> Result<()> {
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
