//! Every subcommand's options (clap `Args`, one file each) and the parsers of their values:
//! the one home of arguments. `cli` assembles them into the `ifsock` command and the
//! views run them; neither imports the other.
pub mod abort;
pub mod agent;
pub mod doctor;
pub mod hung;
pub mod journal;
pub mod sockets;
pub mod teardown;
pub mod tun;
pub mod watch;

pub use abort::AbortArgs;
pub use agent::AgentArgs;
pub use doctor::DoctorArgs;
pub use hung::HungArgs;
pub use journal::JournalArgs;
pub use sockets::SocketsArgs;
pub use teardown::TeardownArgs;
pub use tun::TunArgs;
pub use watch::WatchArgs;

/// Parses a duration such as `500ms`, `5s`, `2m`, `1h`. A unit is required (is `5` five
/// seconds or five milliseconds?), except for `0`, which is the same in every unit.
///
/// # Errors
/// Missing or unknown unit (the message names the fix, `5s`), or not a number.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "" if n == 0.0 => 0.0,
        "" => return Err(format!("{s:?} has no unit: write {s}s (or {s}ms, {s}m, {s}h)")),
        "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range (examples: 500ms, 5s, 2m)"))
}

/// The longest interval or duration any option accepts (24 h): anything longer is a typo.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The shortest period a repeating option accepts (1 ms): 0 would spin.
pub const MIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);

/// A period between repeated actions (`hung --interval`, `tun --interval`): 1ms to 24h.
///
/// # Errors
/// Not a duration (see [`parse_duration`]), or outside 1ms..=24h, with the range in the message.
pub fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_PERIOD || d > MAX_DURATION {
        return Err(format!("{s:?} is out of range: use 1ms to 24h"));
    }
    Ok(d)
}

/// A wait or threshold where 0 means "none" or "at once" (`--grace`, `--min-blocked`,
/// `--stranded-after`; `--reconcile-every`, where 0 turns it off): 0 to 24h.
///
/// # Errors
/// Not a duration (see [`parse_duration`]), or over 24h, with the range in the message.
pub fn parse_bounded_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is out of range: use 0 to 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("5s").unwrap().as_secs(), 5);
        assert_eq!(parse_duration("0"), Ok(std::time::Duration::ZERO), "zero needs no unit");
        let e = parse_duration("5").err().unwrap_or_default();
        assert!(e.contains("no unit") && e.contains("5s"), "{e}");
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("1.1.1s").is_err());
        assert!(parse_duration(&format!("{}h", "9".repeat(400))).is_err(), "out of range, not a panic");
    }
    #[test]
    fn periods_refuse_zero_and_more_than_a_day() {
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_positive_duration("24h"), Ok(MAX_DURATION));
        for bad in ["0", "0s", "0.0001s", "25h", "999999h"] {
            let e = parse_positive_duration(bad).err().unwrap_or_default();
            assert!(e.contains("1ms to 24h"), "{bad}: {e}");
        }
        assert!(parse_positive_duration("5x").is_err());
    }

    #[test]
    fn bounded_durations_allow_zero_but_not_more_than_a_day() {
        assert_eq!(parse_bounded_duration("0"), Ok(Duration::ZERO));
        assert!(parse_bounded_duration("999999h").err().unwrap_or_default().contains("0 to 24h"));
    }
}
