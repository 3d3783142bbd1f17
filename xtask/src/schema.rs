//! The JSON records of `cargo xtask test` checked against docs/schema/ (JSON Schema 2020-12):
//! the integration tests append every record they read to `$IFSOCK_RECORD_LOG`
//! (tests/src/lib.rs `record_json`), and xtask/scripts/validate_records.py validates the log
//! with Python's `jsonschema` from the test venv. The guest of `vm-test` has no Python: only
//! host runs are validated.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Where `cargo xtask test` has the tests write their records.
pub fn record_log(root: &Path) -> PathBuf {
    root.join("target").join("test-records.jsonl")
}

/// The test venv's python (`$IFSOCK_PY_VENV`, default /tmp/ifsock-venv, made by .ci/run).
pub fn venv_python() -> PathBuf {
    std::env::var_os("IFSOCK_PY_VENV").map_or_else(|| PathBuf::from("/tmp/ifsock-venv"), PathBuf::from).join("bin/python")
}

/// Records per command tag in a record log: each line `{"command": "watch", "record": {...}}`.
/// A line that is not one whole entry (two tests' writes interleaved, a torn write) is an
/// error naming its line number: the hook's one-`write(2)`-per-line promise is broken.
pub fn parse_log(text: &str) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let entry: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {} of the record log is not JSON: {:.200}", n + 1, line))?;
        let (Some(command), Some(_)) = (entry["command"].as_str(), entry.get("record")) else {
            bail!("line {} of the record log has no \"command\" string and \"record\": {:.200}", n + 1, line);
        };
        *counts.entry(command.to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The validator script's command line: `SCHEMA_DIR` then `args`.
fn script(root: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg(root.join("xtask/scripts/validate_records.py")).arg(root.join("docs/schema")).args(args);
    cmd
}

/// Validates the record log of a test run; `full` (no test filter) also requires that every
/// schema file was exercised by a record. Prints the script's lines, ending with
/// `schema: N records validated against M schemas`.
pub fn validate(root: &Path, log: &Path, full: bool) -> Result<()> {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    let counts = parse_log(&text)?;
    let per: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!("schema: records by command: {}", if per.is_empty() { "none".into() } else { per.join(", ") });
    let mut args = vec![log.as_os_str()];
    if full {
        args.push("--require-coverage".as_ref());
    }
    let py = venv_python();
    let st = script(root, &args).status().with_context(|| {
        format!("starting {} (fix: python3 -m venv {} && pip install jsonschema, as .ci/run does; or set IFSOCK_PY_VENV)", py.display(), py.parent().and_then(Path::parent).unwrap_or(Path::new("")).display())
    })?;
    if !st.success() {
        bail!("JSON records do not match docs/schema/ (above: the record, the schema and the error; {})", log.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn record_log_lines_are_counted_by_command_and_a_torn_line_is_named() {
        let log = "{\"command\":\"watch\",\"record\":{\"type\":\"ready\"}}\n{\"command\":\"sockets\",\"record\":{}}\n{\"command\":\"watch\",\"record\":{\"type\":\"change\"}}\n";
        let counts = parse_log(log).unwrap();
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("sockets".to_string(), 1), ("watch".to_string(), 2)]);
        assert!(parse_log("").unwrap().is_empty());
        let torn = "{\"command\":\"watch\",\"record\":{}}\n{\"command\":\"watch\",\"rec{\"command\":\"hung\",\"record\":{}}\n";
        let err = parse_log(torn).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_log("{\"record\":{}}\n").unwrap_err().to_string();
        assert!(err.contains("no \"command\""), "{err}");
    }

    #[test]
    fn every_schema_file_is_a_valid_2020_12_schema() {
        let out = script(&root(), &["--check-schemas".as_ref()]).output().unwrap_or_else(|e| panic!("{}: {e} (fix: make the venv as .ci/run does, or set IFSOCK_PY_VENV)", venv_python().display()));
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_record_with_a_renamed_field_fails_and_the_real_one_passes() {
        let doctor = serde_json::json!({"kernel_release": "6.18.0", "btf": true, "lockdown": "integrity", "tracefs_mounted": true,
            "bpffs_mounted": true, "mounted_now": {"mounted_tracefs": false, "mounted_bpffs": false}, "probe_set": null,
            "recv_probe_set": null, "probes": [], "socket_destroy": [], "capabilities": null, "summary": "ok"});
        let mut renamed = doctor.clone();
        let btf = renamed.as_object_mut().and_then(|o| o.remove("btf")).unwrap();
        renamed["has_btf"] = btf;
        let dir = std::env::temp_dir().join(format!("xtask-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, record, ok) in [("good", doctor, true), ("renamed", renamed, false)] {
            let log = dir.join(format!("{name}.jsonl"));
            std::fs::write(&log, format!("{}\n", serde_json::json!({"command": "doctor", "record": record}))).unwrap();
            let out = script(&root(), &[log.as_os_str()]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.success(), ok, "{name}: {text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(text.contains("schema: 1 records validated against"), "{text}");
            if !ok {
                assert!(text.contains("docs/schema/doctor.json") && text.contains("has_btf"), "names the schema and the field: {text}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
