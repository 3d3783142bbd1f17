//! The end of `cargo xtask test` and `vm-test`: libtest's `test result:` lines summed, the skip
//! log (tests/src/skip.rs: `SKIP <bin>::<test>: <feature>: <fact>`) counted, and one line
//! `N passed, N failed, N skipped` followed by each skipped test with its fact.
use anyhow::{bail, Result};

/// Sums of libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// `test result:` lines seen (one per test binary run).
    pub binaries: usize,
    /// Tests that returned without panicking, skipped ones included.
    pub passed: u64,
    pub failed: u64,
    /// `#[ignore]`d tests.
    pub ignored: u64,
}

impl Totals {
    /// Adds the counts of `line` when it holds a libtest summary, e.g.
    /// `test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.11s`
    /// (anywhere in the line: a guest console may print a kernel message before it).
    pub fn add_line(&mut self, line: &str) {
        let Some(pos) = line.find("test result: ") else { return };
        let rest = &line[pos..];
        let count = |what: &str| -> Option<u64> {
            let end = rest.find(&format!(" {what}"))?;
            rest[..end].rsplit([' ', '.', ';']).next()?.parse().ok()
        };
        let (Some(passed), Some(failed)) = (count("passed"), count("failed")) else { return };
        self.binaries += 1;
        self.passed += passed;
        self.failed += failed;
        self.ignored += count("ignored").unwrap_or(0);
    }
}

/// One skipped test, from a skip log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Skip {
    /// `<bin>::<test>`.
    pub test: String,
    /// The feature name(s): `fentry`, or `a|b` for a test that needs either.
    pub feature: String,
    /// The kernel fact that decided the skip.
    pub fact: String,
}

impl Skip {
    /// Parses `SKIP <bin>::<test>: <feature>: <fact>` (from anywhere in the line).
    pub fn parse(line: &str) -> Option<Skip> {
        let rest = &line[line.find("SKIP ")? + 5..];
        let (test, rest) = rest.split_once(": ")?;
        let (feature, fact) = rest.split_once(": ")?;
        Some(Skip { test: test.trim().into(), feature: feature.trim().into(), fact: fact.trim().into() })
    }
}

/// Prints `N passed, N failed, N skipped` (passed excludes skipped tests) and the skipped tests
/// with their facts, then fails when a test failed, no test ran, or a skipped test needed a
/// feature in `must_run` (tests/src/skip.rs panics in that case; this catches a test that
/// skipped by other means).
pub fn finish(totals: &Totals, skips: &[Skip], must_run: &[&str]) -> Result<()> {
    let skipped = skips.len() as u64;
    println!();
    println!("{} passed, {} failed, {} skipped", totals.passed.saturating_sub(skipped), totals.failed, skipped);
    for s in skips {
        println!("  skipped {}: {}: {}", s.test, s.feature, s.fact);
    }
    if totals.ignored > 0 {
        println!("  ({} #[ignore]d tests not run)", totals.ignored);
    }
    let forbidden: Vec<&Skip> = skips.iter().filter(|s| s.feature.split('|').any(|f| must_run.contains(&f))).collect();
    if !forbidden.is_empty() {
        let names: Vec<&str> = forbidden.iter().map(|s| s.test.as_str()).collect();
        bail!("{} must run on this kernel ({}) but skipped: {}", forbidden.len(), must_run.join(","), names.join(", "));
    }
    if totals.failed > 0 {
        bail!("{} tests failed", totals.failed);
    }
    if totals.passed + totals.failed == 0 {
        bail!("no test ran ({} test binaries reported): a run that tests nothing proves nothing", totals.binaries);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed_and_other_lines_ignored() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.11s");
        t.add_line("[  412.1] random: crng init done test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 4 filtered out; finished in 9.00s");
        t.add_line("test a_test_named_test_result ... ok");
        t.add_line("running 6 tests");
        assert_eq!(t, Totals { binaries: 2, passed: 9, failed: 2, ignored: 1 });
    }

    #[test]
    fn skip_lines_parse_with_their_fact() {
        let s = Skip::parse("test fentry_x ... SKIP kernel_probes::fentry_x: fentry: lockdown=integrity (/sys/kernel/security/lockdown): BPF trampolines are refused").unwrap();
        assert_eq!(s.test, "kernel_probes::fentry_x");
        assert_eq!(s.feature, "fentry");
        assert_eq!(s.fact, "lockdown=integrity (/sys/kernel/security/lockdown): BPF trampolines are refused");
        assert_eq!(Skip::parse("test ok ... ok"), None);
    }

    #[test]
    fn a_must_run_skip_a_failure_or_an_empty_run_fails() {
        let ran = Totals { binaries: 1, passed: 4, failed: 0, ignored: 0 };
        let skip = |f: &str| Skip { test: "b::t".into(), feature: f.into(), fact: "x".into() };
        assert!(finish(&ran, &[skip("kprobe")], &["fentry"]).is_ok());
        assert!(finish(&ran, &[skip("fentry")], &["fentry"]).is_err());
        assert!(finish(&ran, &[skip("bpf_sock_destroy|sock_diag_destroy")], &["sock_diag_destroy"]).is_err());
        assert!(finish(&Totals { failed: 1, ..ran }, &[], &[]).is_err());
        assert!(finish(&Totals { binaries: 3, ..Totals::default() }, &[], &[]).is_err());
    }
}
