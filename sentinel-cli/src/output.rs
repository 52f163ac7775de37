//! How results are shown: aligned tables with relative times for people (colour only on a
//! terminal), or JSON for scripts.

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

    /// Prints one line (or one JSON document).
    pub fn print(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// Prints a JSON value, pretty.
    pub fn json(&self, value: &Value) {
        self.print(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
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
}
