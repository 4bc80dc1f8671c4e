//! Rate limits in the core: requests and tokens per minute over a sliding window of one-second
//! buckets, and concurrent requests. Used per deployment by the router and per key by auth.
//!
//! [`RateLimiter`] is the interface; [`MemoryLimiter`] keeps the windows in this process. A
//! shared backend (Redis) implements the same trait, so several gateways can share limits.
//! Time is passed in by the caller (`tokio::time::Instant`), so tests control it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

const WINDOW_SECS: usize = 60;

/// Limits of one subject (a deployment, a key). `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u32>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_parallel.is_none()
    }
}

/// Why a request may not start now, and when it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub what: &'static str,
    pub retry_after: Duration,
}

/// The limiter interface: admit a request (counting it), add its tokens once known, and hold a
/// concurrency slot for its lifetime.
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Admits one request for `subject` at `now`, or says which limit stops it.
    fn admit(&self, subject: &str, limits: &Limits, now: Instant) -> Result<Slot, Limited>;
    /// Counts tokens used by an admitted request.
    fn add_tokens(&self, subject: &str, tokens: u64, now: Instant);
    /// Tokens used in the last minute (for usage-based routing).
    fn tokens_last_minute(&self, subject: &str, now: Instant) -> u64;
    /// Requests in the last minute.
    fn requests_last_minute(&self, subject: &str, now: Instant) -> u64;
}

/// A held concurrency slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    in_flight: Option<Arc<AtomicU32>>,
}

impl Slot {
    pub fn unlimited() -> Self {
        Slot { in_flight: None }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(c) = &self.in_flight {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One subject's sliding window: per-second buckets of requests and tokens.
#[derive(Debug)]
struct Window {
    origin: Instant,
    /// (second index since origin, requests, tokens), oldest first.
    buckets: std::collections::VecDeque<(u64, u64, u64)>,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            origin: now,
            buckets: std::collections::VecDeque::with_capacity(WINDOW_SECS),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn expire(&mut self, now: Instant) {
        let sec = self.second(now);
        while let Some(&(s, _, _)) = self.buckets.front() {
            if s + WINDOW_SECS as u64 <= sec {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(r, t), &(_, br, bt)| (r + br, t + bt))
    }

    fn add(&mut self, now: Instant, requests: u64, tokens: u64) {
        let sec = self.second(now);
        match self.buckets.back_mut() {
            Some(b) if b.0 == sec => {
                b.1 += requests;
                b.2 += tokens;
            }
            _ => self.buckets.push_back((sec, requests, tokens)),
        }
    }

    /// How long until enough of the window expires that `used - freed < limit`.
    fn wait_until_below(
        &self,
        now: Instant,
        limit: u64,
        pick: impl Fn(&(u64, u64, u64)) -> u64,
    ) -> Duration {
        let mut used: u64 = self.buckets.iter().map(&pick).sum();
        for b in &self.buckets {
            used = used.saturating_sub(pick(b));
            if used < limit {
                let frees_at = self.origin + Duration::from_secs(b.0 + WINDOW_SECS as u64);
                return frees_at
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1));
            }
        }
        Duration::from_secs(WINDOW_SECS as u64)
    }
}

#[derive(Debug, Default)]
struct Subject {
    window: Option<Window>,
    in_flight: Arc<AtomicU32>,
}

/// The in-process limiter.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    subjects: Mutex<HashMap<String, Subject>>,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RateLimiter for MemoryLimiter {
    fn admit(&self, subject: &str, limits: &Limits, now: Instant) -> Result<Slot, Limited> {
        if limits.is_unlimited() {
            return Ok(Slot::unlimited());
        }
        let mut subjects = self.subjects.lock();
        let s = subjects.entry(subject.to_string()).or_default();
        let window = s.window.get_or_insert_with(|| Window::new(now));
        window.expire(now);
        let (requests, tokens) = window.totals();
        if let Some(rpm) = limits.rpm
            && requests >= rpm
        {
            return Err(Limited {
                what: "requests per minute",
                retry_after: window.wait_until_below(now, rpm, |b| b.1),
            });
        }
        if let Some(tpm) = limits.tpm
            && tokens >= tpm
        {
            return Err(Limited {
                what: "tokens per minute",
                retry_after: window.wait_until_below(now, tpm, |b| b.2),
            });
        }
        if let Some(max) = limits.max_parallel {
            let taken = s
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
            if taken.is_err() {
                return Err(Limited {
                    what: "parallel requests",
                    retry_after: Duration::from_secs(1),
                });
            }
        } else {
            s.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        window.add(now, 1, 0);
        Ok(Slot {
            in_flight: Some(s.in_flight.clone()),
        })
    }

    fn add_tokens(&self, subject: &str, tokens: u64, now: Instant) {
        let mut subjects = self.subjects.lock();
        if let Some(s) = subjects.get_mut(subject)
            && let Some(w) = s.window.as_mut()
        {
            w.expire(now);
            w.add(now, 0, tokens);
        }
    }

    fn tokens_last_minute(&self, subject: &str, now: Instant) -> u64 {
        let mut subjects = self.subjects.lock();
        subjects
            .get_mut(subject)
            .and_then(|s| s.window.as_mut())
            .map_or(0, |w| {
                w.expire(now);
                w.totals().1
            })
    }

    fn requests_last_minute(&self, subject: &str, now: Instant) -> u64 {
        let mut subjects = self.subjects.lock();
        subjects
            .get_mut(subject)
            .and_then(|s| s.window.as_mut())
            .map_or(0, |w| {
                w.expire(now);
                w.totals().0
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_limits_and_says_when_a_slot_frees() {
        let l = MemoryLimiter::new();
        let t0 = Instant::now();
        let limits = Limits {
            rpm: Some(2),
            ..Limits::default()
        };
        let _a = l.admit("d", &limits, t0).unwrap();
        let _b = l.admit("d", &limits, t0 + Duration::from_secs(10)).unwrap();
        let e = l
            .admit("d", &limits, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(e.what, "requests per minute");
        assert_eq!(e.retry_after, Duration::from_secs(40));
        // The first request leaves the window at t0+60.
        assert!(l.admit("d", &limits, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn tpm_counts_tokens_after_the_fact() {
        let l = MemoryLimiter::new();
        let t0 = Instant::now();
        let limits = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        drop(l.admit("d", &limits, t0).unwrap());
        l.add_tokens("d", 150, t0);
        assert_eq!(
            l.admit("d", &limits, t0).unwrap_err().what,
            "tokens per minute"
        );
        assert!(l.admit("d", &limits, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn parallel_slots_are_freed_on_drop() {
        let l = MemoryLimiter::new();
        let t0 = Instant::now();
        let limits = Limits {
            max_parallel: Some(1),
            ..Limits::default()
        };
        let slot = l.admit("d", &limits, t0).unwrap();
        assert_eq!(
            l.admit("d", &limits, t0).unwrap_err().what,
            "parallel requests"
        );
        drop(slot);
        assert!(l.admit("d", &limits, t0).is_ok());
    }
}
