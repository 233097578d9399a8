//! Time as the domain sees it: microsecond UTC timestamps and an injectable clock, so
//! retention and backoff rules can be tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// A UTC instant with microsecond precision, stored as microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Wraps microseconds since the Unix epoch.
    #[must_use]
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    #[must_use]
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 timestamp with any offset; the result is in UTC.
    ///
    /// # Errors
    /// Returns a message when the text is not RFC 3339.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|dt| Self(dt.with_timezone(&Utc).timestamp_micros()))
            .map_err(|e| format!("not an RFC 3339 timestamp: {e}"))
    }

    /// Parses an RFC 2822 date (HTTP dates after replacing `GMT` with `+0000`).
    ///
    /// # Errors
    /// Returns a message when the text is not such a date.
    pub fn parse_rfc2822(text: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc2822(text)
            .map(|dt| Self(dt.with_timezone(&Utc).timestamp_micros()))
            .map_err(|e| format!("not an RFC 2822 date: {e}"))
    }

    /// Adds a duration, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    /// The instant of a change that follows one made at `previous`: this one, or one
    /// microsecond after `previous` when this clock is behind it (another replica's clock,
    /// or a wall clock stepped back). A record's `updated_at` — its versions' `valid_from`
    /// — so only ever grows.
    #[must_use]
    pub fn following(self, previous: Self) -> Self {
        Self(self.0.max(previous.0.saturating_add(1)))
    }

    /// The RFC 3339 form with six fractional digits and a `Z`.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => String::from("invalid"),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// Where "now" comes from. Production uses [`SystemClock`]; tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(Utc::now().timestamp_micros())
    }
}

/// A clock that only moves when told to; starts at the wall clock's time.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl Default for ManualClock {
    fn default() -> Self {
        Self(AtomicI64::new(SystemClock.now().as_micros()))
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        // Each call returns a distinct instant, so versions stamped in one test stay ordered.
        Timestamp(self.0.fetch_add(1, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_microseconds() {
        let ts = Timestamp::parse_rfc3339("2026-04-17T15:10:02.123456Z").unwrap();
        assert_eq!(ts.to_rfc3339(), "2026-04-17T15:10:02.123456Z");
        let offset = Timestamp::parse_rfc3339("2026-04-17T17:10:02.5+02:00").unwrap();
        assert_eq!(offset.to_rfc3339(), "2026-04-17T15:10:02.500000Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
