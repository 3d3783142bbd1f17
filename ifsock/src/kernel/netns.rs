//! Network namespaces: resolving names and pids to namespace files, reading their inode, and
//! running work inside one (BPF socket iterators and netlink sockets take the netns of the
//! thread that opens them).
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

use crate::model::ids::NetnsIno;

/// Directory of named namespaces (`ip netns add`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace.
#[derive(Debug)]
pub struct NetnsHandle {
    file: File,
    /// Inode number (`net.ns.inum`).
    pub ino: NetnsIno,
    /// Name under /run/netns, when it has one.
    pub name: Option<String>,
    /// Where it was opened from.
    pub path: PathBuf,
}

impl NetnsHandle {
    /// Opens a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`) and checks that it is one.
    ///
    /// # Errors
    /// The file does not exist or is not readable, or it is not a network namespace
    /// (`not a network namespace: PATH (…)`: a regular file, a directory, another namespace type).
    pub fn open(path: &Path, name: Option<String>) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
        check_is_netns(&file, path)?;
        let ino = NetnsIno(file.metadata()?.ino() as u32);
        Ok(NetnsHandle { file, ino, name, path: path.to_path_buf() })
    }

    /// Opens a namespace by name (`/run/netns/NAME`), by pid (`pid:1234`), or by path.
    ///
    /// # Errors
    /// Unknown name, with the list of known ones.
    pub fn resolve(spec: &str) -> Result<Self> {
        if spec.is_empty() {
            bail!("not a network namespace: \"\" (give --netns NAME from {NETNS_RUN_DIR}, pid:PID, or a path such as /proc/PID/ns/net)");
        }
        if let Some(pid) = spec.strip_prefix("pid:") {
            let pid: u32 = pid.parse().map_err(|_| anyhow!("--netns pid:{pid}: not a pid"))?;
            let path = format!("/proc/{pid}/ns/net");
            return match File::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    bail!("no process {pid}: --netns pid:{pid} needs a running process (list them with `ps -e`, or give --netns NAME from {NETNS_RUN_DIR})")
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    bail!("process {pid}'s network namespace ({path}) is not readable: run as root or with CAP_SYS_PTRACE")
                }
                _ => Self::open(Path::new(&path), None),
            };
        }
        if spec.contains('/') {
            return Self::open(Path::new(spec), None);
        }
        let path = Path::new(NETNS_RUN_DIR).join(spec);
        if !path.exists() {
            let known: Vec<String> = named().into_iter().map(|(n, _)| n).collect();
            bail!("no network namespace named {spec:?} in {NETNS_RUN_DIR} (known: {})", if known.is_empty() { "none".into() } else { known.join(", ") });
        }
        Self::open(&path, Some(spec.to_string()))
    }

    /// Moves the calling thread into this namespace.
    ///
    /// # Errors
    /// `setns` failed (needs CAP_SYS_ADMIN).
    pub fn enter(&self) -> Result<()> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {}", self.path.display()))
    }

    /// Runs `f` on a short-lived thread inside this namespace and returns its result.
    ///
    /// # Errors
    /// Entering the namespace failed or the thread panicked.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("netns worker thread panicked"))?
        })
    }
}

/// `NSFS_MAGIC` (include/uapi/linux/magic.h): the filesystem of `/proc/PID/ns/*` and of their
/// bind mounts under /run/netns.
const NSFS_MAGIC: i64 = 0x6e73_6673;

nix::ioctl_none!(
    /// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` (include/uapi/linux/nsfs.h, Linux >= 4.11): the
    /// `CLONE_NEW*` type of a namespace file, as the ioctl's return value (`ENOTTY` before 4.11).
    ns_get_nstype,
    0xb7,
    0x3
);

/// Refuses anything but a network namespace file: the file must live on nsfs (`fstatfs`
/// `f_type == NSFS_MAGIC`) and `NS_GET_NSTYPE` must say `CLONE_NEWNET`. Kernels without
/// `NS_GET_NSTYPE` (< 4.11, `ENOTTY`) are trusted on nsfs alone and `setns` decides.
fn check_is_netns(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let not = |what: &str| {
        anyhow!(
            "not a network namespace: {} ({what}; give --netns NAME from {NETNS_RUN_DIR}, pid:PID, or a path such as /proc/PID/ns/net)",
            path.display()
        )
    };
    let fs = nix::sys::statfs::fstatfs(file).with_context(|| format!("fstatfs on {}", path.display()))?;
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        let meta = file.metadata()?;
        let kind = if meta.is_dir() { "a directory" } else if meta.is_file() { "a regular file" } else { "not a namespace file" };
        return Err(not(kind));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    match unsafe { ns_get_nstype(file.as_raw_fd()) } {
        Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => Ok(()),
        Ok(t) => Err(not(&format!("a {} namespace", ns_type_name(t)))),
        Err(nix::errno::Errno::ENOTTY) => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("NS_GET_NSTYPE on {}", path.display()))),
    }
}

/// Short name of a `CLONE_NEW*` namespace type, as in `/proc/PID/ns/`.
fn ns_type_name(t: i32) -> &'static str {
    match CloneFlags::from_bits_truncate(t) {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ => "non-network",
    }
}

/// The inode of the calling thread's netns (`stat` of `/proc/thread-self/ns/net`, an nsfs
/// inode: the `net->ns.inum` the eBPF side reads).
///
/// # Errors
/// `/proc/thread-self/ns/net` cannot be stat'ed (procfs not mounted, Linux < 3.17 has no
/// `thread-self`).
pub fn current_ino() -> Result<NetnsIno> {
    Ok(NetnsIno(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32))
}

/// Named namespaces in /run/netns with their inodes.
pub fn named() -> Vec<(String, NetnsIno)> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else { return Vec::new() };
    let mut out: Vec<(String, NetnsIno)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ino = std::fs::metadata(e.path()).ok()?.ino() as u32;
            Some((name, NetnsIno(ino)))
        })
        .collect();
    out.sort();
    out
}

/// Every network namespace on the host: named ones and those of running processes, one handle
/// per inode (a named one keeps its name).
pub fn all() -> Vec<NetnsHandle> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (name, _) in named() {
        if let Ok(h) = NetnsHandle::open(&Path::new(NETNS_RUN_DIR).join(&name), Some(name)) {
            if seen.insert(h.ino) {
                out.push(h);
            }
        }
    }
    if let Ok(procs) = procfs::process::all_processes() {
        for p in procs.flatten() {
            let path = PathBuf::from(format!("/proc/{}/ns/net", p.pid));
            if let Ok(meta) = std::fs::metadata(&path) {
                if seen.insert(NetnsIno(meta.ino() as u32)) {
                    if let Ok(h) = NetnsHandle::open(&path, None) {
                        out.push(h);
                    }
                }
            }
        }
    }
    out
}

/// pids of other processes with a thread whose netns is `ino` (`/proc/PID/ns/net` and
/// `/proc/PID/task/TID/ns/net`): they keep the namespace alive after its name is removed.
pub fn holders(ino: NetnsIno) -> Vec<u32> {
    let own = std::process::id();
    let is_ino = |path: PathBuf| std::fs::metadata(path).is_ok_and(|m| m.ino() as u32 == ino.0);
    let Ok(procs) = procfs::process::all_processes() else { return Vec::new() };
    let mut out: Vec<u32> = procs
        .flatten()
        .filter(|p| p.pid as u32 != own)
        .filter(|p| {
            is_ino(PathBuf::from(format!("/proc/{}/ns/net", p.pid)))
                || p.tasks().is_ok_and(|ts| ts.flatten().any(|t| is_ino(PathBuf::from(format!("/proc/{}/task/{}/ns/net", p.pid, t.tid)))))
        })
        .map(|p| p.pid as u32)
        .collect();
    out.sort_unstable();
    out
}

/// The inode of the namespace named `name` under /run/netns, `None` once the name is gone.
pub fn named_ino(name: &str) -> Option<NetnsIno> {
    std::fs::metadata(Path::new(NETNS_RUN_DIR).join(name)).ok().map(|m| NetnsIno(m.ino() as u32))
}
/// A file that signals `POLLPRI` whenever the mount table changes (`mounts_poll`, since 2.6.15):
/// `ip netns add` bind-mounts under /run/netns, so a new named netns shows up here.
pub struct MountTable(std::fs::File);

impl std::os::fd::AsRawFd for MountTable {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// `/proc/self/mountinfo`, registered with the runtime for `POLLPRI`: await
/// `ready(Interest::PRIORITY)` for the next mount-table change.
///
/// # Errors
/// The file cannot be opened or registered (outside a tokio runtime).
pub fn watch_mounts() -> anyhow::Result<tokio::io::unix::AsyncFd<MountTable>> {
    use anyhow::Context as _;
    let table = MountTable(std::fs::File::open("/proc/self/mountinfo").context("opening /proc/self/mountinfo")?);
    // SAFETY: the file is owned by the AsyncFd and stays open until it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(table, tokio::io::Interest::PRIORITY) }.context("watching the mount table for new namespaces")
}

