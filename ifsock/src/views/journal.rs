//! `ifsock journal`: the history an agent recorded (changes, stranded and recovered sockets,
//! namespaces), as human lines or as the JSON lines it stored.
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{
    cli::parse_duration,
    journal::{self, Entry},
    render::{self, unix_ns},
};

/// Options of `journal`.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArgs {
    /// Only records since then: a duration back from now (`10m`, `2h`), a UTC time
    /// (`2026-12-01T19:00:00Z`), or `@UNIX_SECONDS`.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
    /// Only records about this interface (current or previous name).
    #[arg(long)]
    pub iface: Option<String>,
    /// The journal directory an agent writes.
    #[arg(long, default_value = journal::DEFAULT_DIR)]
    pub journal: PathBuf,
    /// The records as stored, one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
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
    format!("{y:04}-{m:02}-{d:02} {}", render::clock(unix_ns))
}

/// Parses `--since` into a Unix-epoch ns lower bound.
///
/// # Errors
/// Neither a duration, a UTC time `YYYY-MM-DDTHH:MM:SS[Z]`, nor `@SECONDS`.
pub fn parse_since(s: &str) -> Result<u64, String> {
    if let Some(secs) = s.strip_prefix('@') {
        let secs: u64 = secs.parse().map_err(|_| format!("--since {s:?}: @ takes Unix seconds (e.g. @1764615600)"))?;
        return secs.checked_mul(1_000_000_000).ok_or_else(|| format!("--since {s:?} is out of range"));
    }
    if let Ok(d) = parse_duration(s) {
        return Ok(unix_ns().saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    }
    let bad = || format!("--since {s:?}: use a duration (10m, 2h), a UTC time (2026-12-01T19:00:00Z) or @UNIX_SECONDS");
    let t = s.trim_end_matches('Z');
    let (date, time) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let h: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || h.len() != 3 {
        return Err(bad());
    }
    let (y, mo, da, hh, mm, ss) = (num(d[0])?, num(d[1])?, num(d[2])?, num(h[0])?, num(h[1])?, num(h[2])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || hh > 23 || mm > 59 || ss > 60 || y < 1970 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + hh * 3600 + mm * 60 + ss;
    Ok(u64::try_from(secs).map_err(|_| bad())? * 1_000_000_000)
}

fn human(e: &Entry) -> String {
    let h = &e.header;
    let ns = match (&h.netns, &h.netns_name) {
        (Some(i), Some(n)) => format!("{i}({n})"),
        (Some(i), None) => i.to_string(),
        (None, _) => "-".into(),
    };
    let iface = |name: &Option<String>| match (h.ifindex, name.as_deref()) {
        (Some(i), Some(n)) if !n.is_empty() => format!(" {i}:{n}"),
        (Some(i), _) => format!(" {i}"),
        (None, Some(n)) if !n.is_empty() => format!(" {n}"),
        _ => String::new(),
    };
    let addr = h.address.map(|a| format!(" {a}")).unwrap_or_default();
    let detail = match h.ty.as_str() {
        "change" => format!("{}{}{addr}", h.event.as_deref().unwrap_or("?"), iface(&h.name)),
        "socket_stranded" | "socket_recovered" => format!("{}{}{addr}", h.reason.as_deref().unwrap_or("?"), iface(&h.ifname)),
        _ => iface(&h.name).trim_start().to_string(),
    };
    format!("{} {:<17} netns {ns} {detail}", date_time(h.ts_unix_ns), h.ty).trim_end().to_string()
}

/// Prints the journal's records, oldest first.
///
/// # Errors
/// The directory cannot be read (with the fix), or stdout closed.
pub fn run(args: JournalArgs, netns: Option<String>) -> Result<()> {
    if !args.journal.is_dir() {
        bail!("no journal at {} (fix: run `ifsock agent --journal {0}` first, or pass --journal DIR)", args.journal.display());
    }
    let read = journal::read(&args.journal, args.since.unwrap_or(0))?;
    if read.skipped > 0 {
        tracing::warn!("{} journal line(s) did not parse and were skipped (a torn last line after a crash)", read.skipped);
    }
    let keep = |e: &Entry| {
        args.iface.as_ref().is_none_or(|i| e.header.mentions_iface(i))
            && netns.as_ref().is_none_or(|n| {
                e.header.netns_name.as_deref() == Some(n.as_str()) || e.header.netns.is_some_and(|i| i.to_string() == *n)
            })
    };
    for e in read.entries.iter().filter(|e| keep(e)) {
        if args.json {
            render::line(&e.line)?;
        } else {
            render::line(&human(e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ago(since_unix_ns: u64) -> Duration {
        Duration::from_nanos(unix_ns().saturating_sub(since_unix_ns))
    }

    #[test]
    fn since_accepts_durations_times_and_seconds() {
        assert_eq!(parse_since("@1764615600").unwrap(), 1_764_615_600_000_000_000);
        assert_eq!(parse_since("2025-12-01T19:00:00Z").unwrap(), 1_764_615_600_000_000_000);
        assert_eq!(parse_since("1970-01-01T00:00:00").unwrap(), 0);
        let ten_min = parse_since("10m").unwrap();
        assert!(ago(ten_min) >= Duration::from_secs(600) && ago(ten_min) < Duration::from_secs(660));
        for bad in ["yesterday", "2025-13-01T00:00:00Z", "@x", "2025-12-01T25:00:00"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_print_in_utc() {
        assert_eq!(date_time(1_764_615_600_123_000_000), "2025-12-01 19:00:00.123");
        assert_eq!(date_time(0), "1970-01-01 00:00:00.000");
    }
}
