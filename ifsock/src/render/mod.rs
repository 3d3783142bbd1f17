//! What users read: one renderer per record (human lines/tables and typed JSON), plus the
//! shared formatters (owners, errno names, timestamps) written once here.
pub mod fmt;
pub mod metrics;

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// The reader of stdout went away (`EPIPE`): the command stops quietly. `main` maps this to
/// exit status 141 (the shell's convention for SIGPIPE) without an error message.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed by its reader")]
pub struct StdoutClosed;

/// Maps a write error on stdout: `EPIPE` becomes [`StdoutClosed`], anything else stays.
fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Writes text to stdout and flushes it (line-oriented consumers read each record as it comes).
///
/// # Errors
/// [`StdoutClosed`] when the reader went away; other write errors with context.
pub fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).map_err(stdout_error)?;
    o.flush().map_err(stdout_error)
}

/// Writes one line (a `\n` is added) to stdout and flushes.
///
/// # Errors
/// As [`out`].
pub fn line(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|()| o.write_all(b"\n")).map_err(stdout_error)?;
    o.flush().map_err(stdout_error)
}

/// Writes one JSON object as a line on stdout and flushes (consumers read line by line).
///
/// # Errors
/// As [`out`], or the value could not be serialised.
pub fn json_line<T: Serialize>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    out(&text)
}

/// Prints rows as a table with left-aligned columns sized to their content.
///
/// # Errors
/// As [`out`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    let mut push = |cells: Vec<&str>| {
        let start = text.len();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        let end = text[start..].trim_end().len() + start;
        text.truncate(end);
        text.push('\n');
    };
    push(header.to_vec());
    for row in rows {
        push(row.iter().map(String::as_str).collect());
    }
    out(&text)
}

/// CLOCK_MONOTONIC now, ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Wall-clock now, ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock ns since the Unix epoch of a CLOCK_MONOTONIC timestamp from the eBPF side.
pub fn unix_ns_of(monotonic: u64) -> u64 {
    unix_ns().saturating_sub(monotonic_ns().saturating_sub(monotonic))
}

/// `HH:MM:SS.mmm` (UTC) of a Unix-epoch ns timestamp.
pub fn clock(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    format!("{:02}:{:02}:{:02}.{ms:03}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

/// Human duration from ns: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn human_ns(ns: u64) -> String {
    let ms = ns / 1_000_000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_duration;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("5").unwrap().as_secs(), 5);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("1.1.1s").is_err());
        assert!(parse_duration(&format!("{}h", "9".repeat(400))).is_err(), "out of range, not a panic");
        assert_eq!(human_ns(1_500_000_000), "1.5s");
        assert_eq!(human_ns(245_000_000_000), "4m05s");
        assert_eq!(clock(3_723_004_000_000), "01:02:03.004");
    }
}
