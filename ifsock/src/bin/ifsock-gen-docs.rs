//! Writes ifsock's man pages and shell completions from its clap definitions
//! (`ifsock::cli::Cli`), so that they always say what `--help` says.
//!
//! `ifsock-gen-docs OUT_DIR` writes:
//! - `OUT_DIR/man/ifsock.1` and one `OUT_DIR/man/ifsock-<subcommand>.1` per subcommand (roff,
//!   `clap_mangen`);
//! - `OUT_DIR/completions/ifsock.bash`, `_ifsock` (zsh) and `ifsock.fish` (`clap_complete`).
//!
//! The output depends only on the clap definitions and the crate version, so `cargo xtask docs
//! --check` can regenerate it and compare byte for byte with the checked-in `docs/`.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;
use ifsock::cli::Cli;

/// The shells completions are written for, with the file name each one's loader looks for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ifsock-gen-docs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: ifsock-gen-docs OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions; `cargo xtask docs` runs it for docs/)");
    };
    let out = PathBuf::from(out);
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}: check that its parent is writable", dir.display()))?;
    }
    write_man_pages(&man)?;
    let mut cmd = Cli::command();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut cmd, "ifsock", &completions)
            .with_context(|| format!("writing the {shell} completion into {}", completions.display()))?;
    }
    Ok(())
}

/// One page per visible subcommand (`ifsock-sockets.1`, …) plus `ifsock.1`, as
/// `clap_mangen::generate_to` names them, each with the version in its title line and a SEE ALSO
/// section pointing at the other pages and at the reference in `docs/`.
fn write_man_pages(dir: &Path) -> Result<()> {
    // Built once so that each subcommand knows its display name (`ifsock-sockets`); clap's
    // `help` subcommand gets no page.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let source = format!("ifsock {}", env!("CARGO_PKG_VERSION"));
    let subs: Vec<clap::Command> = root.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let sub_names: Vec<String> = subs.iter().map(|s| s.get_name().to_owned()).collect();
    let pages = std::iter::once((root.clone(), None)).chain(subs.iter().map(|s| (s.clone(), Some(s.get_name()))));
    for (cmd, sub) in pages {
        let man = clap_mangen::Man::new(cmd).source(source.as_str()).manual("ifsock manual");
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page).with_context(|| format!("rendering {}", path.display()))?;
        page.extend_from_slice(see_also(sub, &sub_names).as_bytes());
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The SEE ALSO section in roff: the main page lists every subcommand's page; a subcommand's
/// page names `ifsock(1)` and its reference page `docs/<sub>.md` in the source tree.
fn see_also(sub: Option<&str>, subs: &[String]) -> String {
    let roff_name = |n: &str| n.replace('-', "\\-");
    match sub {
        None => {
            let pages: Vec<String> = subs.iter().map(|s| format!("\\fBifsock\\-{}\\fR(1)", roff_name(s))).collect();
            format!(".SH \"SEE ALSO\"\n{}\n.PP\nREADME.md and docs/ in the source tree: the reference for each subcommand (fields, sources, limits).\n", pages.join(", "))
        }
        Some(s) => format!(
            ".SH \"SEE ALSO\"\n\\fBifsock\\fR(1)\n.PP\ndocs/{}.md in the source tree: the reference for this subcommand (fields, sources, limits).\n",
            s
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_the_reference_page_its_man_page_points_to() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let missing: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("{}.md", s.get_name()))
            .filter(|page| !docs.join(page).is_file())
            .collect();
        assert!(missing.is_empty(), "docs/ lacks {missing:?}: each man page's SEE ALSO names docs/<subcommand>.md");
    }

    #[test]
    fn man_pages_are_one_per_visible_subcommand_plus_the_main_page() {
        let dir = std::env::temp_dir().join(format!("ifsock-gen-docs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        write_man_pages(&dir).expect("man pages");
        let mut written: Vec<String> =
            std::fs::read_dir(&dir).expect("read temp dir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        written.sort();
        let mut expected: Vec<String> =
            Cli::command().get_subcommands().filter(|s| !s.is_hide_set()).map(|s| format!("ifsock-{}.1", s.get_name())).collect();
        expected.push("ifsock.1".into());
        expected.sort();
        let sockets = std::fs::read_to_string(dir.join("ifsock-sockets.1")).expect("sockets page");
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        assert_eq!(written, expected);
        assert!(sockets.contains(&format!("\"ifsock {}\"", env!("CARGO_PKG_VERSION"))), "title line carries the version");
        assert!(sockets.contains("docs/sockets.md"), "SEE ALSO names the reference page");
    }
}
