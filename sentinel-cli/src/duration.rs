//! Durations as operators type and read them: `90s`, `5m`, `4h30m`, `2d`; `4m12s ago`.

use std::time::Duration;

/// The units, as the messages name them.
const UNITS: &str = "s, m or min (minutes), h or d (days)";

/// Parses `1d2h3m4s`-style durations: each unit at most once, largest first, `m` and `min` both
/// minutes. A number without a unit is refused: `30` could mean 30 seconds or 30 days, and a purge
/// must not guess.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!(
            "empty duration; use a number and a unit: {UNITS}, e.g. 30d"
        ));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit; use a number and a unit: {UNITS}, e.g. {text}d or {text}s"
        ));
    }
    let units: [(&[&str], u64); 4] = [
        (&["d"], 86_400),
        (&["h"], 3_600),
        (&["m", "min"], 60),
        (&["s"], 1),
    ];
    let mut rest = text;
    let mut total: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration; use a number and a unit: {UNITS}, e.g. 30d or 4h30m"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(position) = units
            .iter()
            .skip(next_unit)
            .position(|(names, _)| names.contains(&unit))
        else {
            return Err(format!(
                "{text:?}: unknown or repeated unit {unit:?}; the units are {UNITS}, largest first"
            ));
        };
        let index = next_unit + position;
        next_unit = index + 1;
        total = number
            .checked_mul(units[index].1)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
    }
    Ok(Duration::from_secs(total))
}

/// Every unit of `d`, down to the second (`30d`, `1d1h1m1s`, `0s`): what a purge is told, in the
/// form [`parse`] reads back.
pub fn exact(d: Duration) -> String {
    let parts = units_of(d);
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text
    }
}

/// The whole days, hours, minutes and seconds of `d`, largest first.
fn units_of(d: Duration) -> [(u64, &'static str); 4] {
    let secs = d.as_secs();
    [
        (secs / 86_400, "d"),
        ((secs / 3_600) % 24, "h"),
        ((secs / 60) % 60, "m"),
        (secs % 60, "s"),
    ]
}

/// `4m12s`, `3h`, `2d5h`, `850ms`: the two largest units.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let parts = units_of(d);
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("4h30m"), Ok(Duration::from_secs(16_200)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1d2h3min4s"), Ok(Duration::from_secs(93_784)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        // A bare number has no unit: `30` meant as 30 days must not purge after 30 seconds.
        for bare in ["30", "0", " 42 "] {
            let error = parse(bare).unwrap_err();
            assert!(
                error.contains("no unit") && error.contains("m or min (minutes)"),
                "{bare:?}: {error}"
            );
        }
        for bad in [
            "250ms",
            "5mo",
            "5M",
            "1m1min",
            "",
            "m",
            "5x",
            "5m4h",
            "1h1h",
            "-3s",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn exact_durations_read_back() {
        for (text, secs) in [
            ("0s", 0),
            ("30d", 30 * 86_400),
            ("1d1h1m1s", 90_061),
            ("2h5s", 7_205),
            ("59s", 59),
        ] {
            assert_eq!(exact(Duration::from_secs(secs)), text);
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn formats_the_two_largest_units() {
        assert_eq!(format(Duration::from_millis(850)), "850ms");
        assert_eq!(format(Duration::from_millis(999)), "999ms");
        assert_eq!(format(Duration::from_secs(1)), "1s");
        assert_eq!(format(Duration::from_secs(252)), "4m12s");
        assert_eq!(format(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(
            format(Duration::from_secs(2 * 86_400 + 5 * 3600 + 7)),
            "2d5h"
        );
    }
}
