//! Which probe paths must run on which kernel: one table, matched against facts read from the
//! kernel that runs the tests (its release and lockdown mode). The matching row's features go to
//! the tests as `$IFSOCK_MUST_RUN` (tests/src/skip.rs), where a skip of one of them is a failure;
//! the run's skip log is checked against the same list.
use std::{path::Path, process::Command};

/// The paths one kind of kernel must run. Feature names are tests/src/skip.rs `Feature::name`s.
pub struct Expectation {
    /// Where this row applies, for the log.
    pub place: &'static str,
    /// Kernel `(major, minor)` at least this…
    pub kernel_from: (u32, u32),
    /// …and below this.
    pub kernel_below: (u32, u32),
    /// Lockdown modes (`/sys/kernel/security/lockdown`'s bracketed word; `none` also when the
    /// kernel has no lockdown LSM).
    pub lockdown: &'static [&'static str],
    /// Features whose tests must run, never skip.
    pub must_run: &'static [&'static str],
}

/// The expectation table. A kernel no row matches runs whatever it has (its skips are still
/// counted and listed).
pub const EXPECTATIONS: &[Expectation] = &[
    // The project's host and CI machine (6.18, lockdown=integrity): lockdown refuses BPF
    // trampolines (fentry: EPERM) and the kernel has no kprobe PMU, so the tracepoint set carries
    // every probe test; socket iterators (>= 5.9) and the bpf_sock_destroy kfunc (>= 6.5) are
    // there. A newer kernel under lockdown keeps all three.
    Expectation {
        place: "lockdown host, Linux >= 6.5",
        kernel_from: (6, 5),
        kernel_below: (u32::MAX, 0),
        lockdown: &["integrity", "confidentiality"],
        must_run: &["tracepoint", "iterators", "bpf_sock_destroy"],
    },
    // The vm-test guest: Debian 12's linux-image-cloud-amd64 (6.1) booted by QEMU without
    // `lockdown=` and without Secure Boot, so lockdown is none (were it not, fentry would skip
    // and this row would fail the run): fentry and kprobes work, and it is the only run of those
    // sets. No bpf_sock_destroy before 6.5, so SOCK_DESTROY over sock_diag
    // (CONFIG_INET_DIAG_DESTROY=y in Debian's config) is abort's only path and must run.
    // Tracepoints and iterators are there too and must not silently go.
    Expectation {
        place: "vm-test guest, Debian 6.1",
        kernel_from: (6, 1),
        kernel_below: (6, 2),
        lockdown: &["none"],
        must_run: &["fentry", "kprobe", "sock_diag_destroy", "tracepoint", "iterators"],
    },
];

/// The row for a kernel `version` running with lockdown `mode`, if any.
pub fn expectation(version: (u32, u32), mode: &str) -> Option<&'static Expectation> {
    EXPECTATIONS
        .iter()
        .find(|e| version >= e.kernel_from && version < e.kernel_below && e.lockdown.contains(&mode))
}

/// `(major, minor)` of a release string such as `6.1.0-41-cloud-amd64`; `(0, 0)` when it has
/// no number.
pub fn version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The host kernel's release (`/proc/sys/kernel/osrelease`, what `uname -r` prints).
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The host's lockdown mode: the bracketed word of `/sys/kernel/security/lockdown`, mounting
/// securityfs first when it is not (a fresh boot may not have it); `none` when the kernel has no
/// lockdown LSM.
pub fn host_lockdown() -> String {
    const PATH: &str = "/sys/kernel/security/lockdown";
    if !Path::new(PATH).exists() {
        let _ = Command::new("mount").args(["-t", "securityfs", "securityfs", "/sys/kernel/security"]).output();
    }
    std::fs::read_to_string(PATH).ok().as_deref().and_then(bracketed).unwrap_or_else(|| "none".into())
}

fn bracketed(text: &str) -> Option<String> {
    text.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_host_and_the_guest_and_nothing_else() {
        let host = expectation(version("6.18.44-fc-v1300"), "integrity").expect("the lockdown host");
        assert_eq!(host.must_run, ["tracepoint", "iterators", "bpf_sock_destroy"]);
        let guest = expectation(version("6.1.0-41-cloud-amd64"), "none").expect("the 6.1 guest");
        assert!(guest.must_run.contains(&"fentry") && guest.must_run.contains(&"kprobe") && guest.must_run.contains(&"sock_diag_destroy"));
        assert!(expectation(version("6.4.0"), "integrity").is_none(), "no bpf_sock_destroy before 6.5");
        assert!(expectation(version("6.18.0"), "none").is_none());
        assert!(expectation(version("6.1.0"), "integrity").is_none());
        assert_eq!(version("6.10.3-arch1"), (6, 10));
        assert_eq!(bracketed("none [integrity] confidentiality\n").as_deref(), Some("integrity"));
    }

    #[test]
    fn every_must_run_name_is_a_feature_of_skip_rs() {
        // tests/src/skip.rs Feature::name; a typo here would make a row require nothing.
        let skip_rs = include_str!("../../tests/src/skip.rs");
        for e in EXPECTATIONS {
            for f in e.must_run {
                assert!(skip_rs.contains(&format!("=> \"{f}\"")), "{f} is not a Feature::name in tests/src/skip.rs");
            }
        }
    }
}
