//! Help for a mistyped name: the closest known name ("did you mean") and the list to pick from.

/// Edit distance between two names (optimal string alignment: insertions, deletions,
/// substitutions and swaps of two neighbours, each 1), by bytes (interface names are bytes,
/// at most 15).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known name closest to `wanted`, if one is close enough to be a typo: one edit per three
/// bytes of `wanted`, at most 2 (so a name of 1 or 2 bytes suggests nothing); ties go to the first.
pub fn closest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wanted.len() / 3).min(2);
    known
        .into_iter()
        .map(|k| (distance(wanted, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The help appended to an "unknown interface" error: `did you mean "eth0"? interfaces here:
/// eth0, lo, wg0` (sorted; `none` when the namespace has none).
pub fn unknown_help<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let mut known: Vec<&str> = known.into_iter().collect();
    known.sort_unstable();
    known.dedup();
    let list = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    match closest(wanted, known.iter().copied()) {
        Some(k) => format!("did you mean {k:?}? interfaces here: {list}"),
        None => format!("interfaces here: {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_closest_name_and_the_list() {
        assert_eq!(distance("eht0", "eth0"), 1);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("eth", "eth0"), 1);
        assert_eq!(closest("eth1", ["lo", "eth0", "wg0"]), Some("eth0"));
        assert_eq!(closest("veth-ab", ["veth-ac", "lo"]), Some("veth-ac"));
        assert_eq!(closest("x", ["lo", "y"]), None, "one letter is too short to guess from");
        assert_eq!(closest("nosuchif0", ["lo", "eth0"]), None);
        assert_eq!(unknown_help("eht0", ["lo", "eth0"]), "did you mean \"eth0\"? interfaces here: eth0, lo");
        assert_eq!(unknown_help("zzz", ["lo"]), "interfaces here: lo");
        assert_eq!(unknown_help("zzz", []), "interfaces here: none");
    }
}
