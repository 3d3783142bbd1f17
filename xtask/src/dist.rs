//! `cargo xtask dist`: the Debian package `target/dist/ifsock_<version>-1_<arch>.deb`, built by
//! cargo-deb from `[package.metadata.deb]` in ifsock/Cargo.toml: the release binary (built as
//! `cargo xtask run` builds it), the ifsock-agent unit (installed, not enabled), the man pages and
//! shell completions from docs/, and deploy/ under /usr/share/ifsock/deploy.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::{build, status, toolchain};

/// The cargo-deb release the package metadata is written for (`cargo install --locked`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// The installed cargo-deb's version (`cargo-deb --version` prints `cargo-deb 3.8.0`), if any.
fn installed_cargo_deb() -> Option<String> {
    let out = std::process::Command::new("cargo-deb").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.split_whitespace().last().unwrap_or_default().to_string())
}

/// Installs cargo-deb [`CARGO_DEB_VERSION`] when it is missing or another version, if allowed.
fn ensure_cargo_deb(install_missing: bool) -> Result<()> {
    let have = installed_cargo_deb();
    if have.as_deref() == Some(CARGO_DEB_VERSION) {
        return Ok(());
    }
    let cmd = format!("cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}");
    if !install_missing {
        bail!("cargo-deb {CARGO_DEB_VERSION} is needed (found: {}); run: {cmd}", have.as_deref().unwrap_or("none"));
    }
    eprintln!("xtask dist: {cmd}");
    status(toolchain::cargo().args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION]))
}

/// Builds the package and returns its path.
///
/// # Errors
/// The release build, installing cargo-deb, or cargo-deb itself failed (its message names the
/// missing asset or metadata).
pub fn run(root: &Path, install_missing: bool) -> Result<PathBuf> {
    ensure_cargo_deb(install_missing)?;
    build(true)?;
    let out_dir = root.join("target").join("dist");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let before: Vec<PathBuf> = debs(&out_dir)?;
    for old in &before {
        std::fs::remove_file(old).with_context(|| format!("removing the old {}", old.display()))?;
    }
    // --no-build: the binary is the one `build(true)` just made with the project's toolchain.
    status(toolchain::cargo().current_dir(root).args(["deb", "--no-build", "-p", "ifsock", "--output"]).arg(&out_dir))?;
    let made = debs(&out_dir)?;
    match made.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => bail!("cargo-deb left {} .deb files in {} instead of one: {made:?}", made.len(), out_dir.display()),
    }
}

fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    out.sort();
    Ok(out)
}
