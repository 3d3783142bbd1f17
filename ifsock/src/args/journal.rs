//! Options of `ifsock journal`.
use std::path::PathBuf;

use super::parse_duration;
use crate::{journal, kernel::clock::unix_ns, render::days_from_civil};

/// Options of `journal`.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArgs {
    /// Only records since then: a duration back from now (`10m`, `2h`), a UTC time
    /// (`2026-12-01T19:00:00Z`), or `@UNIX_SECONDS`.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
    /// Only records about this interface: any record under this name, and every record of an
    /// interface that had it before or after a rename (same netns and ifindex).
    #[arg(long)]
    pub iface: Option<String>,
    /// The journal directory an agent writes.
    #[arg(long, default_value = journal::DEFAULT_DIR)]
    pub journal: PathBuf,
    /// The records as stored, one JSON object per line.
    #[arg(long)]
    pub json: bool,
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
}
