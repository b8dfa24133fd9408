//! When to poll next, exactly as OPA decides it (v1/download/download.go,
//! v1/util/backoff.go).

use std::time::Duration;

use rand::Rng;

use crate::config::Polling;

/// OPA's first backoff step (`minRetryDelay`).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// OPA's backoff growth per failed attempt.
const BACKOFF_FACTOR: f64 = 1.6;
/// OPA's jitter: ±20 % of the delay.
const BACKOFF_JITTER: f64 = 0.2;

/// The delay after a successful poll: uniform in `[min, max]`, or none at
/// all while the server long-polls (it already held the request).
pub fn after_success(polling: &Polling, long_polling: bool, rng: &mut impl Rng) -> Duration {
    if long_polling {
        return Duration::ZERO;
    }
    let min = polling.min_delay.as_secs_f64();
    let max = polling.max_delay.as_secs_f64();
    Duration::from_secs_f64(min + rng.random::<f64>() * (max - min))
}

/// The delay after `retries` consecutive failures before this one: none
/// for the first, then `0.1 s × 1.6^n` capped at `max_delay`, ±20 %.
pub fn after_failure(polling: &Polling, retries: u32, rng: &mut impl Rng) -> Duration {
    if retries == 0 {
        return Duration::ZERO;
    }
    let max = polling.max_delay.as_secs_f64();
    let mut delay = BACKOFF_BASE.as_secs_f64();
    let mut steps = retries;
    while delay < max && steps > 0 {
        delay *= BACKOFF_FACTOR;
        steps -= 1;
    }
    delay = delay.min(max);
    delay *= 1.0 + BACKOFF_JITTER * (rng.random::<f64>() * 2.0 - 1.0);
    Duration::from_secs_f64(delay.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn polling(min: u64, max: u64) -> Polling {
        Polling {
            min_delay: Duration::from_secs(min),
            max_delay: Duration::from_secs(max),
            long_polling_timeout: None,
        }
    }

    #[test]
    fn success_delay_stays_within_min_and_max() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = polling(10, 20);
        let delays: Vec<_> = (0..1000)
            .map(|_| after_success(&p, false, &mut rng))
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| (10.0..=20.0).contains(&d.as_secs_f64()))
        );
        // Spread over the range, not stuck at one end.
        assert!(delays.iter().any(|d| d.as_secs_f64() < 12.0));
        assert!(delays.iter().any(|d| d.as_secs_f64() > 18.0));
    }

    #[test]
    fn long_polling_asks_again_at_once() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            after_success(&polling(60, 120), true, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_grows_by_1_6_with_jitter_and_caps_at_max() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = polling(1, 5);
        assert_eq!(after_failure(&p, 0, &mut rng), Duration::ZERO);
        for (retries, nominal) in [(1, 0.16), (2, 0.256), (3, 0.4096), (10, 5.0), (40, 5.0)] {
            for _ in 0..200 {
                let d = after_failure(&p, retries, &mut rng).as_secs_f64();
                assert!(
                    d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                    "retries {retries}: {d} not within 20% of {nominal}"
                );
            }
        }
    }
}
