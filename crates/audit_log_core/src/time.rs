//! Timestamps enter hashes as microseconds since 1970-01-01 00:00:00 UTC. The
//! text form used in exports is RFC 3339 in UTC with six fractional digits,
//! e.g. `2026-11-21T09:30:00.000001Z`. PostgreSQL counts from 2000-01-01.

/// Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub fn from_pg_timestamp(pg_us: i64) -> i64 {
    pg_us.saturating_add(PG_EPOCH_OFFSET_US)
}

pub fn to_pg_timestamp(unix_us: i64) -> i64 {
    unix_us.saturating_sub(PG_EPOCH_OFFSET_US)
}

// Days from civil date and back (proleptic Gregorian), after H. Hinnant's algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Format Unix microseconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_rfc3339(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parse exactly the form [`format_rfc3339`] writes.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    // Digits only (no sign, no space): at most 6 of them, so no overflow.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b.get(r)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None; // e.g. February 30th
    }
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339(PG_EPOCH_OFFSET_US),
            "2000-01-01T00:00:00.000000Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789012Z"),
            Some(1_709_210_096_789_012)
        );
        assert_eq!(parse_rfc3339("2023-02-29T12:34:56.789012Z"), None);
        assert_eq!(parse_rfc3339("2023-02-28 12:34:56.789012Z"), None);
    }

    proptest! {
        #[test]
        fn roundtrip(us in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(us)), Some(us));
        }
    }
}
