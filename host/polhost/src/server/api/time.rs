//! Times as OPA shows them: RFC 3339 in UTC with the fraction Go's
//! `time.RFC3339Nano` writes (trailing zeros dropped, none when whole), and
//! UNIX nanoseconds for the Prometheus gauges.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as Go marshals a UTC `time.Time`: `2026-11-27T21:06:00.12Z`.
/// humantime writes the date and nine digits of fraction; Go drops the
/// trailing zeros, and the dot when the second is whole.
pub(super) fn rfc3339_nano(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_nanos(t.max(UNIX_EPOCH)).to_string();
    let (whole, fraction) = text
        .trim_end_matches('Z')
        .split_once('.')
        .expect("humantime writes nanoseconds");
    match fraction.trim_end_matches('0') {
        "" => format!("{whole}Z"),
        fraction => format!("{whole}.{fraction}Z"),
    }
}

/// Nanoseconds since the UNIX epoch (0 before it).
pub(super) fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
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
