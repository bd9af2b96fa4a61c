//! A model's push rate over the last few seconds and the wall-clock time of its last push:
//! sampled on the commit-policy task's tick (never on the push path), read by the
//! dashboard to show what is training now and to pick the most recently active model.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
    /// Unix ms of the first sample that saw the count move since the one before.
    last_change_unix_ms: Option<i64>,
}

impl RateMeter {
    /// Records the push count at `now` (`unix_ms` is the same moment on the wall clock).
    pub fn sample(&mut self, now: Instant, unix_ms: i64, pushes: u64) {
        // the task also runs when woken by pushes: a sample per 100 ms is plenty
        if self.samples.back().is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_millis(100)) {
            return;
        }
        if self.samples.back().is_some_and(|(_, n)| *n != pushes) {
            self.last_change_unix_ms = Some(unix_ms);
        }
        self.samples.push_back((now, pushes));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
            self.samples.pop_front();
        }
    }

    /// Pushes per second over the window (0 before two samples).
    pub fn per_sec(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// When a push last arrived, as far as the samples saw (none since the server started).
    pub fn last_push_unix_ms(&self) -> Option<i64> {
        self.last_change_unix_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_window() {
        let mut m = RateMeter::default();
        let t = Instant::now();
        m.sample(t, 1000, 0);
        assert_eq!((m.per_sec(), m.last_push_unix_ms()), (0.0, None));
        m.sample(t + Duration::from_secs(1), 2000, 50);
        m.sample(t + Duration::from_secs(2), 3000, 100);
        assert_eq!(m.per_sec(), 50.0);
        assert_eq!(m.last_push_unix_ms(), Some(3000));
        // quiet for longer than the window: the rate falls to 0, the last push stays
        m.sample(t + Duration::from_secs(9), 10_000, 100);
        m.sample(t + Duration::from_secs(10), 11_000, 100);
        assert_eq!(m.per_sec(), 0.0);
        assert_eq!(m.last_push_unix_ms(), Some(3000));
    }
}
