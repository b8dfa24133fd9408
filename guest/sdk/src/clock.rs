//! Wall-clock time for signatures and credential expiry: the guest reads
//! `wasi:clocks/wall-clock` (through `std::time::SystemTime`) and formats
//! UTC dates itself (a date crate would double a fetcher's size).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A UTC instant broken into its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The UTC fields of `unix` seconds.
    pub fn from_unix(unix: i64) -> Utc {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
        }
    }

    /// Seconds since the Unix epoch.
    pub fn to_unix(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `YYYYMMDDTHHMMSSZ` (SigV4's `x-amz-date`).
    pub fn basic(self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (HTTP's date, `x-ms-date`).
    pub fn http_date(self) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let weekday = DAYS[self.to_unix().div_euclid(86_400).rem_euclid(7) as usize];
        format!(
            "{weekday}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            self.day,
            MONTHS[(self.month - 1) as usize],
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }

    /// Parses RFC 3339 / ISO 8601 UTC (`2026-11-27T21:06:00Z`, fractional
    /// seconds and a `+00:00` offset accepted); `None` otherwise.
    pub fn parse_rfc3339(text: &str) -> Option<Utc> {
        let t = text.trim();
        let num = |s: Option<&str>| s?.parse::<u32>().ok();
        let (date, time) = t.split_once(['T', 't', ' '])?;
        let mut d = date.split('-');
        let year = d.next()?.parse::<i64>().ok()?;
        let (month, day) = (num(d.next())?, num(d.next())?);
        let time = time
            .trim_end_matches(['Z', 'z'])
            .trim_end_matches("+00:00")
            .split('.')
            .next()?;
        let mut h = time.split(':');
        let (hour, minute, second) = (num(h.next())?, num(h.next())?, num(h.next())?);
        let valid = (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second < 61;
        valid.then_some(Utc {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t = Utc::from_unix(1_440_938_160); // 2015-08-30T12:36:00Z
        assert_eq!(t.basic(), "20150830T123600Z");
        assert_eq!(t.to_unix(), 1_440_938_160);
        assert_eq!(
            Utc::from_unix(784_111_777).http_date(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(Utc::parse_rfc3339("2015-08-30T12:36:00.123Z").unwrap(), t);
        assert_eq!(Utc::from_unix(951_782_400).basic(), "20000229T000000Z");
        assert!(Utc::parse_rfc3339("yesterday").is_none());
    }
}
