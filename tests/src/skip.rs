//! Skips decided from kernel facts that the harness reads itself, never from ifsock's answers.
//!
//! A privileged test that needs a kernel feature calls [`needs`] first:
//!
//! ```no_run
//! use ifsock_tests::skip::{needs, Feature};
//! if !needs(Feature::Fentry) {
//!     return; // said and counted: `SKIP <test>: fentry: <fact>`
//! }
//! ```
//!
//! The fact is read here, from the kernel: the lockdown mode, the kprobe PMU, a function or
//! kfunc in `/sys/kernel/btf/vmlinux`, the kernel version, or an operation the harness tries on
//! a socket of its own. A skip is written to stderr with `write_all` (libtest captures only the
//! `print!` family, so the line reaches the CI log even when the test passes) and appended to
//! `$IFSOCK_SKIP_LOG` when set; `cargo xtask test` and `vm-test` count those lines.
//!
//! `$IFSOCK_MUST_RUN` (comma-separated [`Feature::name`]s, set by the xtask from its per-kernel
//! expectation table) turns a skip of a listed feature into a failure: on a kernel that must
//! have the feature, its absence is a broken kernel or harness, not a reason to pass.
use std::{
    io::Write as _,
    sync::OnceLock,
};

/// A kernel feature a test path depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// fentry/fexit programs: BTF has the traced function, the kernel has BPF trampolines
    /// (x86-64, >= 5.5) and lockdown does not forbid them (measured: EPERM under
    /// `lockdown=integrity` on the 6.18 host).
    Fentry,
    /// kprobe/kretprobe programs: the kprobe PMU (`/sys/bus/event_source/devices/kprobe/type`)
    /// or tracefs `kprobe_events` exists.
    Kprobe,
    /// Classic and raw tracepoints (`syscalls:*`, `sock:*`) and `tp_btf`: always there on a
    /// kernel with BTF; listed so that the expectation table can require it.
    Tracepoint,
    /// BPF socket iterators (`iter/udp`, `iter/tcp`, `iter/task_file`): BTF has
    /// `bpf_iter_udp`/`bpf_iter_tcp` (>= 5.9).
    Iterators,
    /// The `bpf_sock_destroy` kfunc (>= 6.5): a FUNC named `bpf_sock_destroy` in vmlinux BTF.
    BpfSockDestroy,
    /// `SOCK_DESTROY` over NETLINK_SOCK_DIAG (`CONFIG_INET_DIAG_DESTROY`): the harness destroys a
    /// UDP socket of its own on 127.0.0.1 and reads the kernel's answer.
    SockDiagDestroy,
    /// io_uring: `kernel.io_uring_disabled` (`/proc/sys/kernel/io_uring_disabled`, >= 6.6; absent
    /// before, where io_uring is always allowed) is not 2, and `io_uring_setup(2)` of a ring of
    /// the harness's own succeeds (ENOSYS: the kernel lacks `CONFIG_IO_URING`).
    IoUring,
}

impl Feature {
    /// Every feature, in the order of [`Feature::name`]'s table.
    pub const ALL: [Feature; 7] = [
        Feature::Fentry,
        Feature::Kprobe,
        Feature::Tracepoint,
        Feature::Iterators,
        Feature::BpfSockDestroy,
        Feature::SockDiagDestroy,
        Feature::IoUring,
    ];

    /// The name used in `SKIP` lines and in `$IFSOCK_MUST_RUN`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Fentry => "fentry",
            Feature::Kprobe => "kprobe",
            Feature::Tracepoint => "tracepoint",
            Feature::Iterators => "iterators",
            Feature::BpfSockDestroy => "bpf_sock_destroy",
            Feature::SockDiagDestroy => "sock_diag_destroy",
            Feature::IoUring => "io_uring",
        }
    }

    /// `Ok(())` when this kernel has the feature, else the fact that says it does not.
    pub fn available(self) -> Result<(), String> {
        static CACHE: OnceLock<Vec<(Feature, Result<(), String>)>> = OnceLock::new();
        let all = CACHE.get_or_init(|| Feature::ALL.iter().map(|f| (*f, f.read())).collect());
        all.iter().find(|(f, _)| *f == self).map(|(_, r)| r.clone()).unwrap_or(Ok(()))
    }

    fn read(self) -> Result<(), String> {
        match self {
            Feature::Fentry => {
                btf_func("__skb_recv_udp")?;
                match lockdown().as_deref() {
                    Some(mode @ ("integrity" | "confidentiality")) => {
                        Err(format!("lockdown={mode} (/sys/kernel/security/lockdown): BPF trampolines are refused; needs a kernel without lockdown, e.g. the 6.1 VM"))
                    }
                    _ => Ok(()),
                }
            }
            Feature::Kprobe => {
                if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
                    || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
                {
                    Ok(())
                } else {
                    Err("no kprobe PMU (/sys/bus/event_source/devices/kprobe/type) and no tracefs kprobe_events: this kernel has no kprobes".into())
                }
            }
            Feature::Tracepoint => {
                if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
                    Ok(())
                } else {
                    Err("no /sys/kernel/btf/vmlinux: ifsock needs a kernel with BTF".into())
                }
            }
            Feature::Iterators => btf_func("bpf_iter_udp").and_then(|()| btf_func("bpf_iter_tcp")),
            Feature::BpfSockDestroy => {
                let (major, minor) = kernel_version();
                if (major, minor) < (6, 5) {
                    return Err(format!("kernel {major}.{minor} < 6.5: no bpf_sock_destroy kfunc"));
                }
                btf_func("bpf_sock_destroy")
            }
            Feature::SockDiagDestroy => sock_diag_destroy_works(),
            Feature::IoUring => io_uring_works(),
        }
    }
}

/// True when the calling test may go on. When this kernel lacks `feature`, writes
/// `SKIP <test>: <feature>: <fact>` (stderr, uncaptured, and `$IFSOCK_SKIP_LOG`) and returns
/// false; the caller returns at once.
///
/// # Panics
/// The feature is missing although `$IFSOCK_MUST_RUN` lists it: that kernel must run this path.
pub fn needs(feature: Feature) -> bool {
    let Err(fact) = feature.available() else { return true };
    let test = test_name();
    if must_run(feature) {
        panic!("{test} must run the {} path on this kernel ($IFSOCK_MUST_RUN), but: {fact}", feature.name());
    }
    record(&format!("SKIP {test}: {}: {fact}", feature.name()));
    false
}

/// True when the calling test may go on: this kernel has at least one of `features` (a test
/// that runs whichever path exists, e.g. `abort` without `--via`). When it has none, writes one
/// `SKIP <test>: <a>|<b>: <fact a>; <fact b>` line and returns false.
///
/// # Panics
/// None of `features` is there although `$IFSOCK_MUST_RUN` lists one of them.
pub fn needs_any(features: &[Feature]) -> bool {
    if features.iter().any(|f| f.available().is_ok()) {
        return true;
    }
    let facts: Vec<String> = features.iter().filter_map(|f| f.available().err().map(|e| format!("{}: {e}", f.name()))).collect();
    let test = test_name();
    let names: Vec<&str> = features.iter().map(|f| f.name()).collect();
    if let Some(f) = features.iter().find(|f| must_run(**f)) {
        panic!("{test} must run the {} path on this kernel ($IFSOCK_MUST_RUN), but: {}", f.name(), facts.join("; "));
    }
    record(&format!("SKIP {test}: {}: {}", names.join("|"), facts.join("; ")));
    false
}

/// True when `$IFSOCK_MUST_RUN` lists `feature`.
pub fn must_run(feature: Feature) -> bool {
    std::env::var("IFSOCK_MUST_RUN").is_ok_and(|v| v.split(',').any(|n| n.trim() == feature.name()))
}

/// The running test's name: libtest names the thread it runs a test on after the test.
fn test_name() -> String {
    let bin = std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .map(|f| f.rsplit_once('-').map_or(f.clone(), |(stem, _hash)| stem.to_string()))
        .unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("?").to_string();
    format!("{bin}::{thread}")
}

fn record(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    if let Some(path) = std::env::var_os("IFSOCK_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The lockdown mode in `/sys/kernel/security/lockdown` (the bracketed word), if readable.
/// securityfs is mounted first when it is not (a fresh boot may not have it; the answer must not
/// depend on whether ifsock, which mounts it too, ran before). `None`: the kernel has no
/// lockdown LSM (no file even with securityfs mounted).
pub fn lockdown() -> Option<String> {
    const PATH: &str = "/sys/kernel/security/lockdown";
    if !std::path::Path::new(PATH).exists() {
        let _ = nix::mount::mount(Some("securityfs"), "/sys/kernel/security", Some("securityfs"), nix::mount::MsFlags::empty(), None::<&str>);
    }
    let text = std::fs::read_to_string(PATH).ok()?;
    text.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']).to_string())
}

/// The running kernel's `(major, minor)` from `uname -r`.
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `Ok` when vmlinux BTF has a FUNC named `name`.
pub fn btf_func(name: &str) -> Result<(), String> {
    static BTF: OnceLock<Result<btf_rs::Btf, String>> = OnceLock::new();
    let btf = BTF
        .get_or_init(|| btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}")))
        .as_ref()
        .map_err(Clone::clone)?;
    let found = btf
        .resolve_types_by_name(name)
        .is_ok_and(|types| types.iter().any(|t| matches!(t, btf_rs::Type::Func(_))));
    if found {
        Ok(())
    } else {
        Err(format!("vmlinux BTF has no function {name}"))
    }
}

/// Reads `kernel.io_uring_disabled` (io_uring/io_uring.c, >= 6.6: 0 allowed, 1 only for
/// `kernel.io_uring_group` and CAP_SYS_ADMIN, 2 refused to all), then sets up a one-entry ring
/// of the harness's own and closes it: the kernel's answer covers `CONFIG_IO_URING` and any
/// LSM that refuses it.
fn io_uring_works() -> Result<(), String> {
    const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";
    if let Ok(v) = std::fs::read_to_string(SYSCTL) {
        if v.trim() == "2" {
            return Err(format!("{SYSCTL} is 2: io_uring is disabled for every process"));
        }
    }
    // struct io_uring_params (include/uapi/linux/io_uring.h): 120 bytes, zeroed.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) with a valid, writable params buffer.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(format!("io_uring_setup of a one-entry ring: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the ring fd just returned, ours to close.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Destroys a UDP socket of the harness's own on 127.0.0.1 with `SOCK_DESTROY`
/// (NETLINK_SOCK_DIAG, `inet_diag_req_v2`), and reads the kernel's answer: 0 is supported,
/// `EOPNOTSUPP` means the kernel lacks `CONFIG_INET_DIAG_DESTROY`.
fn sock_diag_destroy_works() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const SOCK_DESTROY: u16 = 21;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("binding a probe socket: {e}"))?;
    let port = udp.local_addr().map_err(|e| e.to_string())?.port();
    // SAFETY: plain socket(2) call; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(format!("NETLINK_SOCK_DIAG socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh fd we own.
    let nl = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut msg = [0u8; 72];
    msg[0..4].copy_from_slice(&72u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[16] = libc::AF_INET as u8; // sdiag_family
    msg[17] = libc::IPPROTO_UDP as u8; // sdiag_protocol
    msg[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    // inet_diag_sockid at 24: sport, dport (network order), src[16], dst[16], if, cookie[2].
    msg[24..26].copy_from_slice(&port.to_be_bytes());
    msg[28..32].copy_from_slice(&[127, 0, 0, 1]);
    msg[64..72].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    // SAFETY: msg is a valid buffer; the kernel is the destination (zeroed sockaddr_nl).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: pointers and lengths are valid for the call.
    let sent = unsafe {
        libc::sendto(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if sent < 0 {
        return Err(format!("sending SOCK_DESTROY: {}", std::io::Error::last_os_error()));
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(format!("no answer to SOCK_DESTROY: {}", std::io::Error::last_os_error()));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    let errno = -i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    match (kind as i32, errno) {
        (libc::NLMSG_ERROR, 0) => Ok(()),
        (libc::NLMSG_ERROR, libc::EOPNOTSUPP) => Err("SOCK_DESTROY answers EOPNOTSUPP: the kernel lacks CONFIG_INET_DIAG_DESTROY".into()),
        (libc::NLMSG_ERROR, e) => Err(format!("SOCK_DESTROY of the harness's own socket failed: {}", std::io::Error::from_raw_os_error(e))),
        (k, _) => Err(format!("unexpected netlink answer type {k} to SOCK_DESTROY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_are_distinct() {
        let mut names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
    }
}
