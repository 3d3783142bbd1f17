//! Project tasks: toolchain setup, build, run, tests, benchmarks and the VM test. The only place
//! that knows about toolchains and QEMU.
mod dist;
mod docs;
mod expect;
mod report;
mod schema;
mod toolchain;
mod vm;

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ifsock project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: apt packages, Rust toolchains, bpf-linker.
    Setup,
    /// Build (release) and run ifsock with the given arguments: `cargo xtask run -- sockets --iface eth0`.
    Run {
        /// Do not install missing toolchain pieces; stop and print the commands instead.
        #[arg(long)]
        no_install: bool,
        /// Arguments for ifsock.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run unit tests and the privileged integration tests (root, real kernel).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's linux-image-cloud-amd64 (6.1: kprobes and fentry work) under QEMU (TCG) and
    /// run ifsock's privileged integration tests inside it.
    VmTest {
        /// Boot this vmlinuz instead (its modules from --modules).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// lib/modules/<release> of --kernel.
        #[arg(long)]
        modules: Option<PathBuf>,
        /// Only test binaries whose name contains one of these (comma-separated).
        #[arg(long)]
        only: Option<String>,
        /// Also run these benchmarks in the guest after the tests (comma-separated, e.g. `recv`).
        #[arg(long)]
        bench: Option<String>,
        /// Run each selected test binary this many times in the one guest (hunting a flake).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Pass this name filter to every test binary (libtest's substring match).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Run the benchmarks and print one table: each row gives ifsock, a baseline measured in
    /// the same run, the ratio, the target and whether it is met (peak RSS too).
    Bench {
        /// Groups to run (`sockets`, `hung`, `watch`, `burst`, `recv`, `daemons`, `waiters`; all
        /// when none are given).
        /// `IFSOCK_BENCH_SOCKETS=10000,100000` picks the socket counts.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the man pages and shell completions (docs/man, docs/completions) from ifsock's clap
    /// definitions; `--check` fails when the checked-in ones differ (CI runs it).
    Docs {
        /// Regenerate into target/docs-check and compare instead of writing docs/.
        #[arg(long)]
        check: bool,
    },
    /// Build the Debian package target/dist/ifsock_<version>-1_<arch>.deb with cargo-deb
    /// (installed, version pinned, when missing): binary, agent unit (not enabled), man pages,
    /// completions, deploy/.
    Dist,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn may_install() -> bool {
    // A developer laptop: install only when root (apt needs it); otherwise print the commands.
    std::env::var_os("CI").is_some() || Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

fn build(profile_release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = toolchain::cargo();
    cmd.current_dir(&root).args(["build", "-p", "ifsock"]);
    if profile_release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    Ok(root.join("target").join(if profile_release { "release" } else { "debug" }).join("ifsock"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => toolchain::install(),
        Task::Run { no_install, args } => {
            toolchain::ensure(!no_install && may_install())?;
            let bin = build(true)?;
            let st = Command::new(&bin).args(&args).status().with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Task::Test { args } => host_test(&root, &args),
        Task::VmTest { kernel, modules, only, bench, repeat, filter } => {
            vm_test(&root, kernel, modules, VmSelection { only, filter, repeat }, bench)
        }
        Task::Bench { args } => {
            toolchain::ensure(may_install())?;
            let bin = build(true)?;
            let mut cmd = toolchain::cargo();
            cmd.current_dir(&root)
                .args(["run", "--release", "-p", "ifsock-tests", "--bin", "ifsock-bench", "--"])
                .env("IFSOCK_BIN", &bin)
                .args(&args);
            status(&mut cmd)
        }
        Task::Docs { check } => {
            toolchain::ensure(may_install())?;
            docs::run(&root, check)
        }
        Task::Dist => {
            toolchain::ensure(may_install())?;
            let deb = dist::run(&root, may_install())?;
            eprintln!("xtask dist: built {}", deb.display());
            Ok(())
        }
    }
}

/// The features this kernel must run (its row of [`expect::EXPECTATIONS`]), plus any listed in
/// `$IFSOCK_MUST_RUN` already; says which row applied.
fn must_run_for(release: &str, lockdown: &str) -> Vec<String> {
    let mut must: Vec<String> = match expect::expectation(expect::version(release), lockdown) {
        Some(e) => {
            eprintln!("xtask: kernel {release}, lockdown {lockdown}: {}: must run {}", e.place, e.must_run.join(", "));
            e.must_run.iter().map(|f| f.to_string()).collect()
        }
        None => {
            eprintln!("xtask: kernel {release}, lockdown {lockdown}: no row of the expectation table (xtask/src/expect.rs); skips are counted, none fails the run");
            Vec::new()
        }
    };
    if let Ok(extra) = std::env::var("IFSOCK_MUST_RUN") {
        must.extend(extra.split(',').map(str::trim).filter(|f| !f.is_empty() && !must.iter().any(|m| m == f)).map(str::to_string).collect::<Vec<_>>());
    }
    must
}

/// `cargo xtask test`: unit tests and the privileged integration tests on this kernel, with its
/// row of the expectation table as `$IFSOCK_MUST_RUN`; ends with the counts and the skips.
fn host_test(root: &Path, args: &[String]) -> Result<()> {
    toolchain::ensure(may_install())?;
    let bin = build(false)?;
    // The habits stated as lints ([workspace.lints]: no unwrap/expect outside tests, docs on
    // public items) hold only if something runs them. ifsock-ebpf is checked by its own build.
    status(toolchain::cargo().current_dir(root).args(["clippy", "--workspace", "--exclude", "ifsock-ebpf", "--all-targets", "--", "-D", "warnings"]))
        .context("clippy found a lint (fix it, or allow it where it stands with the reason)")?;
    // The library's documentation (ifsock's public API, its crate-level example compiled by the
    // doc tests below) builds without a warning: broken links and missing docs fail here.
    status(toolchain::cargo().current_dir(root).args(["doc", "--no-deps", "-p", "ifsock"]).env("RUSTDOCFLAGS", "-D warnings"))
        .context("cargo doc warned on ifsock's library documentation (RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps -p ifsock)")?;
    // A daemon may use the library without the eBPF object (`default-features = false`).
    status(toolchain::cargo().current_dir(root).args(["check", "-p", "ifsock", "--no-default-features", "--lib", "--examples"]))
        .context("ifsock's library or examples no longer build without the `probes` feature")?;
    let (release, lockdown) = (expect::host_release(), expect::host_lockdown());
    let must_run = must_run_for(&release, &lockdown);
    let skip_log = root.join("target").join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let record_log = schema::record_log(root);
    let _ = std::fs::remove_file(&record_log);
    let mut cmd = toolchain::cargo();
    cmd.current_dir(root)
        // Every binary runs, so that the counts cover the whole suite; any failure still fails.
        .args(["test", "--workspace", "--exclude", "ifsock-ebpf", "--no-fail-fast"])
        .env("IFSOCK_BIN", &bin)
        .env("IFSOCK_SKIP_LOG", &skip_log)
        .env("IFSOCK_MUST_RUN", must_run.join(","))
        .env("IFSOCK_RECORD_LOG", &record_log)
        .arg("--")
        .arg("--test-threads=1")
        .args(args);
    let mut totals = report::Totals::default();
    let st = run_echoing(&mut cmd, |line| totals.add_line(line))?;
    let skips: Vec<report::Skip> =
        std::fs::read_to_string(&skip_log).unwrap_or_default().lines().filter_map(report::Skip::parse).collect();
    let must: Vec<&str> = must_run.iter().map(String::as_str).collect();
    let counted = report::finish(&totals, &skips, &must);
    // Validated even when a test failed: a schema mismatch is worth seeing in the same run.
    // Coverage of every schema file is required only when the whole suite ran (no filter).
    let schema = schema::validate(root, &record_log, args.is_empty());
    if !st.success() {
        let why = counted.err().unwrap_or_else(|| anyhow!("no test result line counted a failure: a build error or a crashed test binary (see above)"));
        return Err(why.context(format!("cargo test failed ({st})")));
    }
    counted?;
    schema
}

/// Runs `cmd` with its stdout passed through as it arrives (libtest's `test x ... ` shows before
/// the test ends) and each complete stdout line handed to `line`; stderr is inherited.
fn run_echoing(cmd: &mut Command, mut line: impl FnMut(&str)) -> Result<ExitStatus> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading cargo test's stdout"),
        };
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(&buf[..n]);
        let _ = so.flush();
        pending.extend_from_slice(&buf[..n]);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = pending.drain(..=nl).collect();
            line(&String::from_utf8_lossy(&l));
        }
    }
    if !pending.is_empty() {
        line(&String::from_utf8_lossy(&pending));
    }
    child.wait().context("waiting for cargo test")
}

/// Integration test binaries that need programs the busybox guest does not have, with the reason.
/// They run on the host (`cargo xtask test`); the VM run names them in its log.
const HOST_ONLY_TESTS: &[(&str, &str)] = &[
    ("stranded", "needs the real daemons from Debian's packages (unbound, dnsmasq), python3 and the tokio test server, which the busybox initramfs does not carry"),
    ("agent", "needs a Prometheus server and python3 with prometheus-client (a venv made by .ci/run), which the busybox initramfs does not carry"),
    ("daemon_waiters", "needs the real daemons from Debian's packages (unbound, dnsmasq), which the busybox initramfs does not carry"),
    ("deploy", "needs promtool and a Prometheus server (Debian's prometheus package), which the busybox initramfs does not carry"),
    ("agent_rights", "runs its nobody receiver in Debian's /usr/bin/python3, which the busybox initramfs does not carry"),
    ("hung_rights", "runs its nobody receiver in Debian's /usr/bin/python3, which the busybox initramfs does not carry"),
    ("waiters_rights", "runs its nobody tokio server through util-linux's setpriv and drops CAP_SYS_PTRACE with capsh, neither of which (nor a passwd entry for nobody) the busybox initramfs carries; wait_queue covers a nobody receiver without the capability in the guest"),
    ("doctor_caps", "drops capabilities with capsh (libcap2-bin), which the busybox initramfs does not carry"),
    ("library", "runs ifsock's examples (target/*/examples, which the guest does not carry) as nobody through util-linux's setpriv"),
];

/// Which integration tests `vm-test` runs, and how often.
struct VmSelection {
    /// Test binaries whose name contains one of these (comma-separated); all when `None`.
    only: Option<String>,
    /// libtest name filter passed to each binary.
    filter: Option<String>,
    /// Runs of each binary, at least 1.
    repeat: u32,
}

/// One integration test binary in the guest.
struct GuestTest {
    /// Cargo's target name (`kernel_probes`).
    name: String,
    /// Its path in the guest.
    guest: String,
}

/// Where the guest writes its skip log (`$IFSOCK_SKIP_LOG`, tests/src/skip.rs); `/tmp` is a tmpfs.
const GUEST_SKIP_LOG: &str = "/tmp/ifsock-skips.log";
/// Prefix of the skip log's lines echoed to the console at the end of the guest script.
const SKIPPED_MARKER: &str = "IFSOCK-SKIPPED ";

/// The guest's script: doctor (its failure fails the run), each test binary `repeat` times (a
/// failing one fails the run), a line for each binary that only runs on the host, the benchmarks,
/// then the skip log echoed with [`SKIPPED_MARKER`] for the host to count.
fn guest_script(tests: &[GuestTest], host_only: &[(&str, &str)], filter: Option<&str>, repeat: u32, bench: Option<&str>) -> String {
    // Single-quoted for the guest's shell (a quote in the filter is dropped).
    let filter = filter.map(|f| format!(" '{}'", f.replace('\'', ""))).unwrap_or_default();
    let mut script = String::from(
        "set -u\nexport IFSOCK_BIN=/ifsock/bin/ifsock RUST_BACKTRACE=1\nfail=0\n/ifsock/bin/ifsock doctor || { echo '== ifsock doctor failed'; fail=1; }\n",
    );
    for (name, why) in host_only {
        script.push_str(&format!("echo \"== {name}: not run in the guest: {why}\"\n"));
    }
    for t in tests {
        let (name, guest) = (&t.name, &t.guest);
        if repeat > 1 {
            script.push_str(&format!(
                "for i in $(seq {repeat}); do echo \"== {name} (run $i of {repeat})\"; {guest} --test-threads=1{filter} || fail=1; done\n"
            ));
        } else {
            script.push_str(&format!("echo \"== {name}\"; {guest} --test-threads=1{filter} || fail=1\n"));
        }
    }
    if let Some(bench) = bench {
        let names = bench.split(',').collect::<Vec<_>>().join(" ");
        script.push_str(&format!("echo \"== bench {names}\"; /ifsock/tests/ifsock-bench {names} || fail=1\n"));
    }
    script.push_str(&format!("[ -f {GUEST_SKIP_LOG} ] && sed 's/^/{SKIPPED_MARKER}/' {GUEST_SKIP_LOG}\nexit $fail\n"));
    script
}

/// The `test result:` totals and the skips in a guest console log.
fn guest_results(console: &str) -> (report::Totals, Vec<report::Skip>) {
    let mut totals = report::Totals::default();
    let mut skips = Vec::new();
    for line in console.lines() {
        match line.find(SKIPPED_MARKER) {
            Some(pos) => skips.extend(report::Skip::parse(&line[pos + SKIPPED_MARKER.len()..])),
            None => totals.add_line(line),
        }
    }
    (totals, skips)
}

/// Builds ifsock and the integration test binaries, and runs them in the VM with the guest
/// kernel's row of the expectation table as `$IFSOCK_MUST_RUN`; ends with the counts and skips.
fn vm_test(root: &Path, kernel: Option<PathBuf>, modules: Option<PathBuf>, sel: VmSelection, bench: Option<String>) -> Result<()> {
    let VmSelection { only, filter, repeat } = sel;
    toolchain::ensure(may_install())?;
    vm::ensure_host_packages()?;
    let bin = build(true)?;
    let out = toolchain::cargo()
        .current_dir(root)
        .args(["test", "--release", "-p", "ifsock-tests", "--tests", "--no-run", "--message-format=json"])
        .output()
        .context("building the integration test binaries")?;
    if !out.status.success() {
        bail!("building test binaries failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut payload = vec![vm::Payload { host: bin, guest: "/ifsock/bin/ifsock".into() }];
    let mut tests = Vec::new();
    let mut host_only = Vec::new();
    let mut all = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str()) else { continue };
        if msg["target"]["kind"][0] != "test" {
            continue;
        }
        all.push(name.to_string());
        if only.as_deref().is_some_and(|o| !o.split(',').any(|p| name.contains(p))) {
            continue;
        }
        // Said in the guest's log, never passed silently.
        if let Some(&(n, why)) = HOST_ONLY_TESTS.iter().find(|(n, _)| *n == name) {
            eprintln!("vm-test: {name} is not run in the guest: {why}");
            host_only.push((n, why));
            continue;
        }
        let guest = format!("/ifsock/tests/{name}");
        payload.push(vm::Payload { host: PathBuf::from(exe), guest: guest.clone() });
        tests.push(GuestTest { name: name.to_string(), guest });
    }
    if tests.is_empty() {
        bail!("no integration test binary to run in the guest (--only {:?}; binaries: {}): a run that tests nothing proves nothing", only.as_deref().unwrap_or(""), all.join(", "));
    }
    if bench.is_some() {
        let out = toolchain::cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "ifsock-tests", "--bin", "ifsock-bench", "--message-format=json"])
            .output()
            .context("building the benchmark binary")?;
        if !out.status.success() {
            bail!("building ifsock-bench failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let exe = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|m| m["target"]["name"] == "ifsock-bench" && m["executable"].is_string())
            .and_then(|m| m["executable"].as_str().map(PathBuf::from))
            .context("cargo did not report the ifsock-bench executable")?;
        payload.push(vm::Payload { host: exe, guest: "/ifsock/tests/ifsock-bench".into() });
    }
    // The guest's expectations come from the kernel it boots, read before boot. Its lockdown is
    // none (no `lockdown=` on the cmdline, no Secure Boot under `-kernel`); were it not, fentry
    // would skip and the must-run list would fail the run.
    let release = vm::guest_release(root, kernel.as_deref())?;
    let must_run = must_run_for(&release, "none");
    let script = guest_script(&tests, &host_only, filter.as_deref(), repeat, bench.as_deref());
    let opts = vm::VmOptions {
        kernel,
        modules_dir: modules,
        payload,
        script,
        timeout: std::time::Duration::from_secs(40 * 60),
        env: vec![("IFSOCK_SKIP_LOG".into(), GUEST_SKIP_LOG.into()), ("IFSOCK_MUST_RUN".into(), must_run.join(","))],
    };
    let run = vm::run(root, &opts);
    let log = vm::last_run_log(root);
    let (totals, skips) = guest_results(&std::fs::read_to_string(&log).unwrap_or_default());
    let must: Vec<&str> = must_run.iter().map(String::as_str).collect();
    let counted = report::finish(&totals, &skips, &must);
    let outcome = match run {
        Ok(outcome) => outcome,
        // No second boot: a guest soft lockup fails the run like any other guest failure.
        Err(e) => match vm::soft_lockup(&log) {
            Some(stacks) => {
                let kept = log.with_file_name("soft-lockup.log");
                let _ = std::fs::copy(&log, &kept);
                bail!("the guest kernel hit a soft lockup and panicked ({e:#}); its stacks:\n{stacks}\nfull log kept in {}", kept.display());
            }
            None => return Err(e),
        },
    };
    eprintln!("vm-test: kernel {} exit {} (log {})", outcome.kernel_release, outcome.exit_code, outcome.log_path.display());
    counted?;
    if outcome.exit_code != 0 {
        bail!("integration tests failed in the VM (kernel {}): exit {}", outcome.kernel_release, outcome.exit_code);
    }
    if expect::version(&outcome.kernel_release) != expect::version(&release) {
        bail!("the guest ran kernel {} but its expectations were chosen for {release}", outcome.kernel_release);
    }
    let runs = tests.len() * repeat as usize;
    if totals.binaries < runs {
        bail!("{runs} test binary runs but {} `test result:` lines in the console: a binary crashed or was killed", totals.binaries);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{guest_results, guest_script, GuestTest, GUEST_SKIP_LOG, SKIPPED_MARKER};

    #[test]
    fn guest_script_fails_on_doctor_and_on_each_binary_and_echoes_the_skip_log() {
        let tests = [GuestTest { name: "abort".into(), guest: "/ifsock/tests/abort".into() }];
        let s = guest_script(&tests, &[("agent", "needs prometheus")], Some("it's"), 1, None);
        assert!(s.contains("/ifsock/bin/ifsock doctor || { echo '== ifsock doctor failed'; fail=1; }"), "{s}");
        assert!(s.find("fail=0").unwrap() < s.find("doctor").unwrap(), "fail is set before doctor can set it: {s}");
        assert!(s.contains("/ifsock/tests/abort --test-threads=1 'its' || fail=1"), "{s}");
        assert!(s.contains("== agent: not run in the guest: needs prometheus"), "{s}");
        assert!(s.contains(&format!("sed 's/^/{SKIPPED_MARKER}/' {GUEST_SKIP_LOG}")), "{s}");
        assert!(s.ends_with("exit $fail\n"), "{s}");
        let r = guest_script(&tests, &[], None, 3, Some("recv,hung"));
        assert!(r.contains("for i in $(seq 3)") && r.contains("/ifsock/tests/ifsock-bench recv hung || fail=1"), "{r}");
    }

    #[test]
    fn guest_console_gives_totals_and_skips() {
        let console = "vm| == kernel_probes\n\
            test fentry_x ... ok\n\
            test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.11s\n\
            test bpf ... SKIP abort::bpf: bpf_sock_destroy: kernel 6.1 < 6.5: no bpf_sock_destroy kfunc\n\
            test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 20s\n\
            IFSOCK-SKIPPED SKIP abort::bpf: bpf_sock_destroy: kernel 6.1 < 6.5: no bpf_sock_destroy kfunc\n";
        let (t, skips) = guest_results(console);
        assert_eq!((t.binaries, t.passed, t.failed), (2, 15, 1));
        assert_eq!(skips.len(), 1, "counted from the echoed skip log only, not from the live stderr line");
        assert_eq!(skips[0].test, "abort::bpf");
        assert_eq!(skips[0].feature, "bpf_sock_destroy");
        assert_eq!(skips[0].fact, "kernel 6.1 < 6.5: no bpf_sock_destroy kfunc");
    }
}
