//! `cargo xtask docs [--check]`: the man pages and shell completions in `docs/man` and
//! `docs/completions`, generated from ifsock's clap definitions by the `ifsock-gen-docs` binary,
//! so that they never drift from `--help`.
use std::{
    collections::BTreeSet,
    path::Path,
};

use anyhow::{bail, Context as _, Result};

use crate::{status, toolchain};

/// The generated folders under `docs/`; nothing else is kept in them.
const GENERATED: [&str; 2] = ["man", "completions"];

/// Writes `docs/man` and `docs/completions` afresh (`check == false`), or regenerates them into
/// `target/docs-check/` and fails, naming every stale, missing or extra file and the fix, when
/// the checked-in files differ (`check == true`).
pub fn run(root: &Path, check: bool) -> Result<()> {
    let docs = root.join("docs");
    if !check {
        for dir in GENERATED {
            let dir = docs.join(dir);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing the old {}", dir.display()))?;
            }
        }
        generate(root, &docs)?;
        eprintln!("xtask docs: wrote {} and {}; commit them", docs.join("man").display(), docs.join("completions").display());
        return Ok(());
    }
    let fresh = root.join("target").join("docs-check");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).with_context(|| format!("removing {}", fresh.display()))?;
    }
    generate(root, &fresh)?;
    let mut stale = Vec::new();
    for dir in GENERATED {
        let (ours, theirs) = (docs.join(dir), fresh.join(dir));
        let names: BTreeSet<String> = files(&ours)?.into_iter().chain(files(&theirs)?).collect();
        for name in names {
            let (checked_in, generated) = (ours.join(&name), theirs.join(&name));
            let shown = format!("docs/{dir}/{name}");
            match (read(&checked_in)?, read(&generated)?) {
                (Some(a), Some(b)) if a == b => {}
                (Some(_), Some(_)) => stale.push(format!("{shown} differs from what the clap definitions give ({})", generated.display())),
                (None, Some(_)) => stale.push(format!("{shown} is missing")),
                (Some(_), None) => stale.push(format!("{shown} is no longer generated (a removed or hidden subcommand?)")),
                (None, None) => {}
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "the checked-in man pages or completions do not match `ifsock --help`:\n  {}\nfix: run `cargo xtask docs` and commit docs/man and docs/completions",
            stale.join("\n  ")
        );
    }
    eprintln!("xtask docs --check: docs/man and docs/completions match the clap definitions");
    Ok(())
}

/// Runs `ifsock-gen-docs OUT` (debug build: the same build `cargo xtask test` makes).
fn generate(root: &Path, out: &Path) -> Result<()> {
    let mut cmd = toolchain::cargo();
    cmd.current_dir(root).args(["run", "--quiet", "-p", "ifsock", "--bin", "ifsock-gen-docs", "--"]).arg(out);
    status(&mut cmd).context("generating the man pages and completions (ifsock/src/bin/ifsock-gen-docs.rs)")
}

/// File names directly in `dir`; none when it does not exist.
fn files(dir: &Path) -> Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// The file's bytes, or `None` when it does not exist.
fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
