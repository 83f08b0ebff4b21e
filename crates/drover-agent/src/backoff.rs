//! Reconnect delays: exponential with full jitter (a uniformly random delay
//! between zero and the current cap), so a fleet that lost its server at the
//! same instant does not come back at the same instant.

use std::time::Duration;

use ring::rand::SecureRandom;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The cap for the current attempt: `min(max, base * 2^attempt)`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay (uniform in `[0, cap]`), then doubles the cap.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(random_unit())
    }

    /// After a connection that worked for a while, start small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniform random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for expected_cap in [100u64, 200, 400, 800, 1600, 3200, 5000, 5000] {
            assert_eq!(b.cap(), Duration::from_millis(expected_cap));
            assert!(b.next_delay() <= Duration::from_millis(expected_cap));
        }
        b.reset();
        assert_eq!(b.cap(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_not_synchronized() {
        let delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(Duration::from_secs(10), Duration::from_secs(10)).next_delay())
            .collect();
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(5))
            .count();
        // Uniform on [0, 10 s]: about half below 5 s; far from all or none.
        assert!(
            (50..150).contains(&early),
            "{early} of 200 below half the cap"
        );
    }
}
