//! The one escaping function for human output. Interface names, comms, cgroup paths,
//! container names and journal text come from other users (an unprivileged user names
//! interfaces in its own user+net namespace and sets its threads' comm): printed raw, an ESC
//! sequence in them would drive the operator's terminal, and a newline would forge a line.
//! `render`'s human sinks ([`super::line`], [`super::out`], [`super::table`]) pass all text
//! through [`escape`], so no renderer can forget it; JSON keeps every string exact (serde).
//!
//! Like procps (`ps` prints such bytes as `?`), but precise: `\x1b`, `\n`, `\\`.
use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` is printed as an escape: C0 controls (U+0000–U+001F), DEL (U+007F), C1 controls
/// (U+0080–U+009F, which some terminals read as ESC sequences: U+009B is CSI), and the
/// backslash that starts every escape.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\'
}

/// `s` with every control character shown visibly: `\n`, `\t`, `\r`, `\\`, other C0 and DEL as
/// `\xNN`, C1 as `\u{NN}`. Borrowed (no copy) when nothing needs escaping, the common case.
/// Invalid UTF-8 never reaches here: names read as bytes are decoded lossily at the edge
/// (U+FFFD, visible) and kept exact only where JSON can carry them.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\' || b == 0xc2) || !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    Cow::Owned(out)
}

/// Appends [`escape`]`(s)` to `out`.
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Escapes each line of a block and keeps the newlines between them (for text whose line ends
/// are its own; a field's newline inside a line is escaped only by [`escape`] on that line).
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    if !s.split('\n').any(|l| matches!(escape(l), Cow::Owned(_))) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (i, l) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        push_escaped(&mut out, l);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_and_plain_text_is_not_copied() {
        assert!(matches!(escape("eth0 unbound[12]/fd3 → ok é"), Cow::Borrowed(_)));
        assert_eq!(escape("\u{1b}[2J\u{7}X"), "\\x1b[2J\\x07X");
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{7f}\u{0}"), "\\x7f\\x00");
        assert_eq!(escape("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(escape("\u{fffd}"), "\u{fffd}");
    }

    #[test]
    fn escaping_is_reversible_so_no_two_names_print_alike() {
        // `\x1b` typed literally prints differently from ESC.
        assert_ne!(escape("\\x1b"), escape("\u{1b}"));
        assert_eq!(escape("\\x1b"), "\\\\x1b");
    }

    #[test]
    fn every_escaped_string_is_free_of_control_bytes() {
        let all: String = (0u32..0x200).filter_map(char::from_u32).collect();
        let e = escape(&all);
        assert!(e.chars().all(|c| !c.is_control()), "{e}");
    }

    #[test]
    fn blocks_keep_their_line_ends() {
        assert!(matches!(escape_lines("a\nb\n"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("a\u{1b}\nb\n"), "a\\x1b\nb\n");
    }
}
