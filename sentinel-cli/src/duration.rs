//! Durations as operators type and read them: `90s`, `5m`, `4h30m`, `2d`; `4m12s ago`.

use std::time::Duration;

/// Parses `1d2h3m4s500ms`-style durations (each unit at most once, in that order; a bare number
/// is seconds).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; use e.g. 90s, 5m, 4h30m or 2d".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let units: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration; use e.g. 90s, 5m, 4h30m or 2d"
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
            .position(|(name, _)| *name == unit)
        else {
            return Err(format!(
                "{text:?}: unknown or repeated unit {unit:?}; units are d, h, m, s, ms in that order"
            ));
        };
        let index = next_unit + position;
        next_unit = index + 1;
        total_ms = number
            .checked_mul(units[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// `4m12s`, `3h`, `2d5h`, `850ms`: the two largest units.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        ((secs / 3_600) % 24, "h"),
        ((secs / 60) % 60, "m"),
        (secs % 60, "s"),
    ];
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
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("42"), Ok(Duration::from_secs(42)));
        for bad in [
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
