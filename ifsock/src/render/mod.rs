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

/// Writes one line of human text that reports something stranded or dead, as [`line`](fn@line):
/// in red on a terminal (see [`set_style`]: never in a pipe, a file or JSON, not with `NO_COLOR`).
///
/// # Errors
/// As [`out`].
pub fn alert_line(text: &str) -> Result<()> {
    let red = COLOUR.load(Ordering::Relaxed);
    emit(|b| {
        if red {
            b.extend_from_slice(b"\x1b[31m");
        }
        b.extend_from_slice(escape::escape(text).as_bytes());
        if red {
            b.extend_from_slice(b"\x1b[0m");
        }
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
/// escaped ([`escape::escape`]) before it is measured. Nothing is cut (see [`table_fit`]).
///
/// # Errors
/// As [`out`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    raw(&layout(header, rows, &Fit::default(), None, false).0)
}

/// Width, in characters, that tables are fitted to unless `--wide` ([`set_style`]).
pub const WIDTH: usize = 120;

/// `--wide`: tables keep every column whole, however wide.
static WIDE: AtomicBool = AtomicBool::new(false);

/// Colour on stdout: decided once ([`set_style`]'s caller, `main`) from the terminal and `NO_COLOR`.
static COLOUR: AtomicBool = AtomicBool::new(false);

/// Sets how tables are printed for this run: `wide` (every column whole, `--wide`), and colour
/// when stdout is a terminal, `NO_COLOR` is unset or empty (<https://no-color.org>) and `TERM`
/// is not `dumb`. Never colour in a pipe, a file or JSON.
pub fn set_style(wide: bool) {
    WIDE.store(wide, Ordering::Relaxed);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    COLOUR.store(std::io::stdout().is_terminal() && !no_color && !dumb, Ordering::Relaxed);
}

/// Whether `--wide` was given.
pub fn wide() -> bool {
    WIDE.load(Ordering::Relaxed)
}

/// How a table is fitted to [`WIDTH`] and coloured.
#[derive(Clone, Debug, Default)]
pub struct Fit<'a> {
    /// Columns that may be cut (with `…`) to fit: (index, width kept as long as possible). The
    /// widest is cut first, down to its kept width; only if that is not enough are they cut
    /// further, widest first, each down to its header or [`MIN_CUT`].
    pub shrink: &'a [(usize, usize)],
    /// Of the `shrink` columns, those cut in the middle (`[fd00:aa…ff:1]:5353`: the port stays).
    pub middle: &'a [usize],
    /// A column whose cells other than `ok`, `-` and empty are shown in red on a terminal
    /// (STATUS: stranded, dead).
    pub alert: Option<usize>,
}

/// The shortest a cut column gets: its header, and at least 6 characters.
const MIN_CUT: usize = 6;

/// Lays out a table: columns left-aligned and sized to their content (cells escaped with
/// [`escape::escape`] and measured in characters), then, when `width` is given and the table is
/// wider, the [`Fit::shrink`] columns cut, widest first, down to [`MIN_CUT`]; a cut cell ends in
/// `…` (or has it in the middle, [`Fit::middle`]). With `colour`, [`Fit::alert`] cells are red. Returns the text and whether a cell was cut.
pub fn layout(header: &[&str], rows: &[Vec<String>], fit: &Fit<'_>, width: Option<usize>, colour: bool) -> (String, bool) {
    let len = |s: &str| s.chars().count();
    let esc: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| escape::escape(c).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| len(h)).collect();
    for row in &esc {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(len(cell));
        }
    }
    if let Some(max) = width {
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        let floor = |i: usize| header.get(i).map_or(MIN_CUT, |h| len(h).max(MIN_CUT));
        // The widest first, down to the width each keeps; then, if that is not enough, further.
        for soft in [true, false] {
            while total(&widths) > max {
                let keeps = |i: usize, keep: usize| floor(i).max(if soft { keep } else { 0 });
                let Some(&(i, _)) = fit.shrink.iter().filter(|&&(i, keep)| i < widths.len() && widths[i] > keeps(i, keep)).max_by_key(|&&(i, _)| widths[i]) else { break };
                widths[i] -= 1;
            }
        }
    }
    let mut cut = false;
    let mut text = String::new();
    let mut push = |cells: &[String], is_header: bool| {
        let start = text.len();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let mut cell = cell.clone();
            if len(&cell) > *w {
                let keep = w.saturating_sub(1);
                cell = if fit.middle.contains(&i) {
                    let tail = keep - keep / 2;
                    let chars: Vec<char> = cell.chars().collect();
                    chars[..keep / 2].iter().chain(['…'].iter()).chain(chars[chars.len() - tail..].iter()).collect()
                } else {
                    cell.chars().take(keep).collect::<String>() + "…"
                };
                cut = true;
            }
            let pad = w - len(&cell);
            let red = colour && !is_header && fit.alert == Some(i) && !matches!(cell.as_str(), "ok" | "-" | "");
            if red {
                text.push_str("\x1b[31m");
            }
            text.push_str(&cell);
            if red {
                text.push_str("\x1b[0m");
            }
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        let end = text[start..].trim_end().len() + start;
        text.truncate(end);
        text.push('\n');
    };
    push(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>(), true);
    for row in &esc {
        push(row, false);
    }
    (text, cut)
}

/// Prints a table fitted to [`WIDTH`] (unless `--wide`), coloured on a terminal ([`layout`]);
/// when a cell was cut, a line says so and how to see it whole.
///
/// # Errors
/// As [`out`].
pub fn table_fit(header: &[&str], rows: &[Vec<String>], fit: &Fit<'_>) -> Result<()> {
    let (mut text, cut) = layout(header, rows, fit, (!wide()).then_some(WIDTH), COLOUR.load(Ordering::Relaxed));
    if cut {
        text.push_str(&format!("(cells ending in … were cut to fit {WIDTH} columns; --wide shows them whole)\n"));
    }
    raw(&text)
}

/// `N things` with the plural: `1 socket`, `7 sockets`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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
    fn tables_fit_the_width_by_cutting_the_named_columns_and_say_so() {
        let header = ["A", "OWNERS", "STATUS"];
        let rows = vec![vec!["x".to_string(), "unbound[12]/fd3,unbound[12]/fd4".to_string(), "device_deleted".to_string()], vec!["y".into(), "-".into(), "ok".into()]];
        let fit = Fit { shrink: &[(1, 0)], middle: &[], alert: Some(2) };
        let (whole, cut) = layout(&header, &rows, &fit, None, false);
        assert!(!cut);
        assert_eq!(whole, "A  OWNERS                           STATUS\nx  unbound[12]/fd3,unbound[12]/fd4  device_deleted\ny  -                                ok\n");
        let (fitted, cut) = layout(&header, &rows, &fit, Some(30), false);
        assert!(cut);
        assert_eq!(fitted, "A  OWNERS       STATUS\nx  unbound[12…  device_deleted\ny  -            ok\n");
        assert!(fitted.lines().all(|l| l.chars().count() <= 30), "{fitted}");
        // Red only for what is not ok, and only when asked (a terminal without NO_COLOR).
        let (red, _) = layout(&header, &rows, &fit, None, true);
        assert!(red.contains("\x1b[31mdevice_deleted\x1b[0m") && !red.contains("\x1b[31mok"), "{red:?}");
        // A table that cannot shrink enough stops at the floor instead of looping.
        let (floor, _) = layout(&header, &rows, &fit, Some(5), false);
        assert!(floor.lines().nth(1).is_some_and(|l| l.contains("unbou…")), "{floor}");
        let addr = vec![vec!["[fd00:aaaa:bbbb:cccc:dddd:eeee:ffff:1]:5353".to_string()]];
        let (mid, _) = layout(&["LOCAL"], &addr, &Fit { shrink: &[(0, 0)], middle: &[0], alert: None }, Some(20), false);
        assert_eq!(mid, "LOCAL\n[fd00:aaa…ff:1]:5353\n");
        // A kept width is cut into only when the others are at theirs.
        let two = vec![vec!["a".repeat(20), "b".repeat(20)]];
        let (kept, _) = layout(&["X", "Y"], &two, &Fit { shrink: &[(1, 8), (0, 18)], middle: &[], alert: None }, Some(32), false);
        assert_eq!(kept.lines().nth(1), Some(format!("{}…  {}…", "a".repeat(17), "b".repeat(11)).as_str()), "{kept}");
        // Below the kept widths, the widest goes first.
        let (under, _) = layout(&["X", "Y"], &two, &Fit { shrink: &[(1, 8), (0, 18)], middle: &[], alert: None }, Some(22), false);
        assert_eq!(under.lines().nth(1), Some(format!("{}…  {}…", "a".repeat(11), "b".repeat(7)).as_str()), "{under}");
        assert_eq!(count(1, "socket", "sockets"), "1 socket");
        assert_eq!(count(7, "socket", "sockets"), "7 sockets");
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
