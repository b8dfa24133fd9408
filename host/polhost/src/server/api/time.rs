//! Times as OPA shows them: RFC 3339 in UTC with the fraction Go's
//! `time.RFC3339Nano` writes (trailing zeros dropped, none when whole), and
//! UNIX nanoseconds for the Prometheus gauges.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as Go marshals a UTC `time.Time`: `2026-11-27T21:06:00.12Z`.
pub(super) fn rfc3339_nano(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Nanoseconds since the UNIX epoch (0 before it).
pub(super) fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a
/// day count since 1970-01-01 (non-negative here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_as_go_rfc3339_nano() {
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00Z");
        // What Go prints: json.Marshal(time.Unix(s, ns).UTC()).
        assert_eq!(
            rfc3339_nano(at(1_795_813_560, 120_000_000)),
            "2026-11-27T21:06:00.12Z"
        );
        assert_eq!(
            rfc3339_nano(at(1_795_813_560, 1)),
            "2026-11-27T21:06:00.000000001Z"
        );
        assert_eq!(rfc3339_nano(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339_nano(at(4_107_542_399, 999_999_999)),
            "2100-02-28T23:59:59.999999999Z"
        );
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn unix_nanos_counts_from_the_epoch() {
        assert_eq!(unix_nanos(at(2, 5)), 2_000_000_005);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
