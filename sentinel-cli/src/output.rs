//! How results are shown: aligned tables with relative times for people (colour only on a
//! terminal), or JSON for scripts.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{Value, json};

use sentinel_core::{Event, ExecutionRecord, ExecutionState, LeaseRecord, Timestamp};

use crate::duration;

/// Where output goes and in which form.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// Machine-readable JSON instead of tables.
    pub json: bool,
    /// ANSI colour (only on a terminal, and never with `NO_COLOR`).
    pub colour: bool,
}

impl Output {
    /// JSON if asked; colour when stdout is a terminal and `NO_COLOR` is unset.
    pub fn new(json: bool) -> Self {
        let colour =
            !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Output { json, colour }
    }

    /// Prints one line (or one JSON document). A failed write (a full disk, a closed pipe) is an
    /// error: a script must not read an empty file as an empty answer.
    pub fn print(&self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// Prints a JSON value, pretty.
    pub fn json(&self, value: &Value) -> std::io::Result<()> {
        self.print(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
    }

    /// `text` in the colour of an execution state.
    pub fn state(&self, state: ExecutionState, uncertain: bool) -> String {
        let (code, label) = match state {
            ExecutionState::Completed => ("32", state.as_str().to_owned()),
            ExecutionState::Executing if uncertain => ("1;31", "executing (UNCERTAIN)".to_owned()),
            ExecutionState::Executing => ("36", state.as_str().to_owned()),
            ExecutionState::Reconciling => ("33", state.as_str().to_owned()),
            ExecutionState::Claimed => ("0", state.as_str().to_owned()),
        };
        self.paint(code, &label)
    }

    /// `text` in bold red, for refusals.
    pub fn alarm(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Whether `c` must not reach a terminal as it is: control characters (C0, DEL, C1: ESC starts
/// sequences that move the cursor or erase lines, CR returns to the line's start) and the
/// bidirectional overrides and isolates, which reorder what is shown.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text from the store (keys, owners, results, event details) as text output may show it: each
/// character a terminal would act on written as an escape (`\x1b`, `\r`, `\u{202e}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            c if c.is_ascii() && hidden(c) => shown.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if hidden(c) => shown.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// A key as text output shows it: as it is, or, when it holds characters a terminal would act
/// on, as the shell word that names it (`$'k\x1b[2K'`), so it is both visible and pasteable.
pub fn key(key: &str) -> Cow<'_, str> {
    if key.chars().any(hidden) {
        Cow::Owned(shell_word(key))
    } else {
        Cow::Borrowed(key)
    }
}

/// `word` as one shell word: bare when it is plainly safe, single-quoted otherwise, and in
/// `$'...'` (bash, zsh, ksh; POSIX sh since 2024) when it holds characters a terminal would act
/// on, which are written as escapes (non-ASCII ones as their UTF-8 bytes, which no locale
/// setting changes).
pub fn shell_word(word: &str) -> String {
    if word.chars().any(hidden) {
        let mut quoted = String::from("$'");
        for c in word.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '\'' => quoted.push_str("\\'"),
                '\n' => quoted.push_str("\\n"),
                '\r' => quoted.push_str("\\r"),
                '\t' => quoted.push_str("\\t"),
                c if hidden(c) => {
                    let mut bytes = [0; 4];
                    for byte in c.encode_utf8(&mut bytes).bytes() {
                        quoted.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => quoted.push(c),
            }
        }
        quoted.push('\'');
        return quoted;
    }
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '+' | ',')
        });
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// "in 4m12s" or "4m12s ago", from the store's `now`.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    match t.duration_since(now) {
        Some(d) if !d.is_zero() => format!("in {}", duration::format(d)),
        _ => format!(
            "{} ago",
            duration::format(now.duration_since(t).unwrap_or(Duration::ZERO))
        ),
    }
}

/// Alive or expired, and for how long.
pub fn liveness(expires: Timestamp, now: Timestamp) -> String {
    match expires.duration_since(now) {
        Some(d) if !d.is_zero() => format!("alive, expires in {}", duration::format(d)),
        _ => format!(
            "expired {} ago",
            duration::format(now.duration_since(expires).unwrap_or(Duration::ZERO))
        ),
    }
}

/// A table with left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(visible_width(cell));
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(visible_width(c));
                format!("{c}{}", " ".repeat(pad))
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// Width on screen, ignoring ANSI colour codes.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// An execution record as JSON, with the store time it was read at and derived facts.
pub fn record_json(record: &ExecutionRecord, now: Timestamp, last_event: Option<&Event>) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("alive".into(), json!(record.is_alive(now)));
        map.insert("uncertain".into(), json!(record.is_uncertain(now)));
        map.insert("now".into(), json!(now));
        if let Some(event) = last_event {
            map.insert(
                "last_event".into(),
                serde_json::to_value(event).unwrap_or(Value::Null),
            );
        }
    }
    value
}

/// A lease record as JSON, with derived facts.
pub fn lease_json(record: &LeaseRecord, now: Timestamp) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("alive".into(), json!(record.is_alive(now)));
        map.insert("now".into(), json!(now));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_relative_to_the_store() {
        let now = Timestamp::from_micros(1_000_000_000_000);
        let later = now.saturating_add(Duration::from_secs(252));
        assert_eq!(relative(later, now), "in 4m12s");
        assert_eq!(relative(now, later), "4m12s ago");
        assert_eq!(liveness(now, later), "expired 4m12s ago");
        assert_eq!(liveness(later, now), "alive, expires in 4m12s");
        // A lease is expired at its expiry instant (DESIGN §2), and "now" is no future.
        assert_eq!(liveness(now, now), "expired 0ms ago");
        assert_eq!(relative(now, now), "0ms ago");
    }

    #[test]
    fn states_say_when_an_execution_is_uncertain() {
        let plain = Output {
            json: false,
            colour: false,
        };
        assert_eq!(
            plain.state(ExecutionState::Executing, true),
            "executing (UNCERTAIN)"
        );
        assert_eq!(plain.state(ExecutionState::Executing, false), "executing");
        assert_eq!(plain.state(ExecutionState::Completed, false), "completed");
        let coloured = Output {
            json: false,
            colour: true,
        };
        assert_eq!(
            coloured.state(ExecutionState::Executing, true),
            "\u{1b}[1;31mexecuting (UNCERTAIN)\u{1b}[0m"
        );
    }

    #[test]
    fn text_from_the_store_is_shown_with_control_characters_escaped() {
        assert_eq!(printable("payment-017"), "payment-017");
        assert_eq!(printable("x\rpayment-017"), "x\\rpayment-017");
        assert_eq!(printable("k\u{1b}[2K\u{7f}"), "k\\x1b[2K\\x7f");
        assert_eq!(printable("c1\u{9b}bidi\u{202e}"), "c1\\u{9b}bidi\\u{202e}");
        assert_eq!(printable("ünïcode ✓ \\x1b"), "ünïcode ✓ \\x1b");
        assert_eq!(key("order 9"), "order 9");
        assert_eq!(key("k\u{1b}[2K"), "$'k\\x1b[2K'");
    }

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let rows = vec![
            vec!["\u{1b}[32mok\u{1b}[0m".to_owned(), "x".to_owned()],
            vec!["long cell".to_owned(), "y".to_owned()],
        ];
        let text = table(&["A", "B"], &rows);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "A          B");
        assert_eq!(lines[2], "long cell  y");
        assert!(lines[1].ends_with("  x"));
    }

    #[test]
    fn hints_quote_keys_for_the_shell() {
        assert_eq!(shell_word("payment-017"), "payment-017");
        assert_eq!(shell_word("order 9"), "'order 9'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_word(""), "''");
        // Control characters are written as escapes ($'...'), never sent raw to the terminal.
        assert_eq!(shell_word("k\u{1b}[2Kpay"), "$'k\\x1b[2Kpay'");
        assert_eq!(shell_word("x\rit's"), "$'x\\rit\\'s'");
    }

    /// What bash makes of each quoted word is the word itself.
    #[test]
    fn quoted_words_paste_back_as_the_same_key() {
        for word in [
            "payment-017",
            "order 9",
            "it's",
            "$(touch /tmp/x)",
            "k`id`",
            "-dash",
            "back\\slash",
            "k\u{1b}[2Kpay",
            "x\rpayment-017",
            "tab\there\n",
            "c1\u{9b}31m",
            "del\u{7f}",
            "bidi\u{202e}txt",
            "ünïcode ✓",
        ] {
            let quoted = shell_word(word);
            let out = std::process::Command::new("bash")
                .args(["-c", &format!("printf %s {quoted}")])
                .output()
                .expect("bash runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{quoted}");
            assert!(
                !quoted.chars().any(char::is_control),
                "{quoted:?} holds a control character"
            );
        }
    }
}
