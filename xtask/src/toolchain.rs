//! The toolchains ifsock needs, detected and installed: a userspace Rust that satisfies aya's
//! MSRV, a pinned nightly with rust-src whose LLVM major equals bpf-linker's, bpf-linker built
//! against apt's LLVM 22, and the apt packages (see shared TOOLCHAIN.md for why each is pinned).
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Userspace toolchain (aya 0.16 / aya-log 0.4 need Rust >= 1.98).
pub const USER_TOOLCHAIN: &str = "1.98.0";
/// eBPF toolchain: ships LLVM 22, like bpf-linker built against apt's llvm-22. Keep in sync with ifsock/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";
/// bpf-linker version.
pub const BPF_LINKER: &str = "0.13.0";
/// Debian packages: LLVM 22 for bpf-linker, iproute2 for tests, QEMU/busybox for vm-test.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev", "libpolly-22-dev", "clang-22", "libzstd-dev", "zlib1g-dev", "iproute2",
];

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has_toolchain(name: &str) -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with(name)))
        .unwrap_or(false)
}

fn missing_apt() -> Vec<&'static str> {
    APT_PACKAGES.iter().copied().filter(|p| !ok(Command::new("dpkg").args(["-s", p]))).collect()
}

/// What is missing, as the exact commands that would install it.
pub fn missing() -> Vec<String> {
    let mut out = Vec::new();
    let apt = missing_apt();
    if !apt.is_empty() {
        out.push(format!("apt-get update && apt-get install -y {}", apt.join(" ")));
    }
    if !has_toolchain(USER_TOOLCHAIN) {
        out.push(format!("rustup toolchain install {USER_TOOLCHAIN} --profile minimal --component clippy,rustfmt"));
    }
    if !has_toolchain(EBPF_TOOLCHAIN) {
        out.push(format!("rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal --component rust-src"));
    }
    if !bpf_linker_ok() {
        out.push(format!(
            "PATH=/usr/lib/llvm-22/bin:$PATH LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo +{USER_TOOLCHAIN} install bpf-linker --version {BPF_LINKER} --no-default-features --features llvm-22 --locked"
        ));
    }
    out
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER))
        .unwrap_or(false)
}

/// Installs whatever is missing (idempotent; skips what is present).
///
/// # Errors
/// An install step failed; the message names the command.
pub fn install() -> Result<()> {
    let apt = missing_apt();
    if !apt.is_empty() {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(&apt))?;
    }
    if !has_toolchain(USER_TOOLCHAIN) {
        run(Command::new("rustup").args(["toolchain", "install", USER_TOOLCHAIN, "--profile", "minimal", "--component", "clippy,rustfmt"]))?;
    }
    if !has_toolchain(EBPF_TOOLCHAIN) {
        run(Command::new("rustup").args(["toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal", "--component", "rust-src"]))?;
    }
    if !bpf_linker_ok() {
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .arg(format!("+{USER_TOOLCHAIN}"))
            .args(["install", "bpf-linker", "--version", BPF_LINKER, "--no-default-features", "--features", "llvm-22", "--locked"])
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// Makes sure everything is present: installs it when `install` is true (or when running as
/// root in CI), otherwise stops with the exact commands.
///
/// # Errors
/// Something is missing and may not be installed, or an install failed.
pub fn ensure(install_missing: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    if install_missing {
        eprintln!("xtask: installing missing toolchain pieces:\n  {}", missing.join("\n  "));
        return install();
    }
    bail!("missing toolchain pieces; run `cargo xtask setup`, or:\n  {}", missing.join("\n  "))
}

/// A `cargo` command on the userspace toolchain.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{USER_TOOLCHAIN}"));
    cmd
}
