//! What users read: one renderer per record (human lines/tables and typed JSON), plus the
//! shared formatters (owners, errno names, timestamps) written once here.
pub mod abort;
pub mod escape;
pub mod fmt;
pub mod health;
pub mod hung;
pub mod journal;
pub mod metrics;
pub mod doctor;
pub mod prompt;
pub mod sockets;
pub mod tun;
pub mod teardown;
pub mod watch;

use std::{
    io::{IsTerminal as _, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

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

/// Buffered output for a command that prints many records at once (`sockets`): while a
/// [`Buffered`] guard lives and stdout is not a terminal, [`out`], [`line`], [`json_line`] and
/// [`table`] append to one process-wide buffer, written in chunks of about [`CHUNK`] bytes, so
/// 100,000 lines cost a few hundred `write(2)` calls instead of 100,000. Without a guard (the
/// default, and what streaming commands such as `watch` and `hung --follow` use), every call
/// is written and flushed at once, so a reader sees each record as it is produced.
static BUFFERED: AtomicBool = AtomicBool::new(false);
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Size at which the buffer of a [`Buffered`] command is written out, bytes.
pub const CHUNK: usize = 64 * 1024;

/// Guard of buffered output (see [`buffered`]). [`Buffered::finish`] flushes and reports a
/// write error; dropping the guard flushes too, but ignores errors (an error path is already
/// being reported).
#[must_use = "call finish() to flush and see write errors"]
pub struct Buffered(());

/// Switches stdout to buffered mode until the returned guard is finished or dropped. On a
/// terminal it stays line by line (a person reads it as it comes).
pub fn buffered() -> Buffered {
    if !std::io::stdout().is_terminal() {
        BUFFERED.store(true, Ordering::Relaxed);
        widen_pipe();
    }
    Buffered(())
}

/// Size asked for a stdout pipe's buffer ([`widen_pipe`]): the default `fs.pipe-max-size`.
pub const PIPE_BYTES: i32 = 1 << 20;

/// When stdout is a pipe, asks the kernel for a [`PIPE_BYTES`] buffer (`F_SETPIPE_SZ`) instead
/// of the default 64 KiB, so that bulk output waits for its reader 16 times less often:
/// `sockets --json` at 100k sockets into `cat`, 364–370 → 313–320 ms (`hyperfine`, 10–12 runs).
/// Refusals (not a pipe, above `fs.pipe-max-size`, over the user's pipe quota) change nothing.
fn widen_pipe() {
    use std::os::fd::AsFd as _;
    let stdout = std::io::stdout();
    if let Err(e) = nix::fcntl::fcntl(stdout.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
        tracing::debug!("stdout pipe buffer left as it is: {e}");
    }
}

impl Buffered {
    /// Writes what is buffered and returns to per-record output.
    ///
    /// # Errors
    /// [`StdoutClosed`] when the reader went away; other write errors with context.
    pub fn finish(self) -> Result<()> {
        BUFFERED.store(false, Ordering::Relaxed);
        flush()
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        BUFFERED.store(false, Ordering::Relaxed);
        let _ = flush();
    }
}

fn pending() -> std::sync::MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves only bytes behind: keep using them.
    PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_out(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes).map_err(stdout_error)?;
    o.flush().map_err(stdout_error)
}

/// Writes whatever buffered output is pending (a no-op when nothing is).
///
/// # Errors
/// As [`out`].
pub fn flush() -> Result<()> {
    let mut buf = pending();
    if buf.is_empty() {
        return Ok(());
    }
    let result = write_out(&buf);
    buf.clear();
    result
}

/// Appends to the buffer in buffered mode (writing it out past [`CHUNK`]); otherwise writes
/// at once, after anything still pending so that order is kept.
fn emit(fill: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
    let mut buf = pending();
    fill(&mut buf)?;
    if BUFFERED.load(Ordering::Relaxed) && buf.len() < CHUNK {
        return Ok(());
    }
    let result = write_out(&buf);
    buf.clear();
    result
}

/// Writes human text (lines ending in `\n`) to stdout: at once and flushed (line-oriented
/// consumers read each record as it comes), or into the buffer while a [`Buffered`] guard is
/// active. Control characters other than the line ends are escaped ([`escape::escape_lines`]).
///
/// # Errors
/// [`StdoutClosed`] when the reader went away; other write errors with context.
pub fn out(text: &str) -> Result<()> {
    raw(&escape::escape_lines(text))
}

/// Writes text as it is (already escaped, or JSON), as [`out`].
fn raw(text: &str) -> Result<()> {
    emit(|b| {
        b.extend_from_slice(text.as_bytes());
        Ok(())
    })
}

/// Writes one line of human text (a `\n` is added) to stdout, as [`out`]; every control
/// character in `text`, a newline included, is escaped ([`escape::escape`]).
///
/// # Errors
/// As [`out`].
pub fn line(text: &str) -> Result<()> {
    emit(|b| {
        b.extend_from_slice(escape::escape(text).as_bytes());
        b.push(b'\n');
        Ok(())
    })
}

/// Writes one line of human text on stderr (what describes the run, not its records), escaped
/// as [`line`](fn@line); a failed write to stderr is ignored (there is nowhere left to report it).
pub fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", escape::escape(text));
}

/// Writes one line that is JSON already (a record as the journal stored it, serialised by
/// serde: its strings carry control characters as `\uXXXX`), unchanged, as [`out`].
///
/// # Errors
/// As [`out`].
pub fn json_text_line(json: &str) -> Result<()> {
    emit(|b| {
        b.extend_from_slice(json.as_bytes());
        b.push(b'\n');
        Ok(())
    })
}

/// Writes one JSON object as a line on stdout, as [`out`] (serialised straight into the
/// output buffer, no string per record).
///
/// # Errors
/// As [`out`], or the value could not be serialised.
pub fn json_line<T: Serialize>(value: &T) -> Result<()> {
    emit(|b| {
        let start = b.len();
        if let Err(e) = serde_json::to_writer(&mut *b, value) {
            b.truncate(start);
            return Err(e.into());
        }
        b.push(b'\n');
        Ok(())
    })
}

/// Prints rows as a table with left-aligned columns sized to their content; each cell is
/// escaped ([`escape::escape`]) before it is measured.
///
/// # Errors
/// As [`out`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(escape::escape(cell).len());
        }
    }
    let mut text = String::new();
    let mut push = |cells: Vec<&str>| {
        let start = text.len();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = escape::escape(cell);
            if i + 1 == cells.len() {
                text.push_str(&cell);
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
    raw(&text)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix-epoch ns timestamp.
pub fn clock(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    format!("{:02}:{:02}:{:02}.{ms:03}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of a Unix-epoch ns timestamp.
pub fn date_time(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let days = secs.div_euclid(86_400);
    // civil_from_days, the inverse of the above.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {}", clock(unix_ns))
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

    #[test]
    fn buffered_output_is_held_and_serialised_like_per_record_output() {
        #[derive(Serialize)]
        struct Row<'a> {
            a: u32,
            b: &'a str,
        }
        BUFFERED.store(true, Ordering::Relaxed);
        json_line(&Row { a: 1, b: "x\"y" }).unwrap();
        line("plain").unwrap();
        let held = std::mem::take(&mut *pending());
        BUFFERED.store(false, Ordering::Relaxed);
        assert_eq!(String::from_utf8(held).unwrap(), "{\"a\":1,\"b\":\"x\\\"y\"}\nplain\n");
        assert!(pending().is_empty());
    }

    #[test]
    fn durations_print() {
        assert_eq!(human_ns(1_500_000_000), "1.5s");
        assert_eq!(human_ns(245_000_000_000), "4m05s");
        assert_eq!(clock(3_723_004_000_000), "01:02:03.004");
        assert_eq!(date_time(1_764_615_600_123_000_000), "2025-12-01 19:00:00.123");
        assert_eq!(date_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(days_from_civil(2025, 12, 1), 20_423);
    }
}
