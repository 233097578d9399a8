//! Standard Webhooks: signing deliveries and verifying them, and the retry schedule.
//!
//! The signature is `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` where `key`
//! is the base64 part of the `whsec_…` secret, decoded. Receivers should verify with
//! [`verify`] (or any Standard Webhooks library) and dedupe by `webhook-id`: delivery
//! is at least once.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a timestamp may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The delay before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
/// 20 h, 24 h (the Standard Webhooks schedule: about a day and a half of retries).
pub const SCHEDULE: [Duration; 10] = [
    Duration::from_secs(0),
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// A webhook secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is whsec_ followed by base64")]
pub struct BadSecret;

/// Decodes a `whsec_…` secret into the HMAC key.
///
/// # Errors
/// Not `whsec_` + base64.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let b64 = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
    STANDARD.decode(b64).map_err(|_| BadSecret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value.
#[must_use]
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(key, id, timestamp, body).finalize().into_bytes()))
}

/// Why a delivery attempt failed, or why a delivery was stopped, as tenants see it: a
/// class, never the transport's own text. That text quotes the endpoint URL, and a URL
/// may carry a token (`?token=…`, a Slack-style path); URLs and raw errors are operator
/// data, which the relay logs with the endpoint id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// No answer within the attempt's time limit (connecting included).
    Timeout,
    /// No connection: refused, unreachable, or the name did not resolve.
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The endpoint answered with this non-2xx status.
    Http(u16),
    /// The request or answer body could not be sent or read.
    Body,
    /// The endpoint redirected (deliveries do not follow redirects blindly).
    Redirect,
    /// Any other failure of the request.
    Request,
    /// The delivery's event is no longer in the outbox: nothing left to send.
    EventGone,
    /// The endpoint left the config: nothing will be sent to it.
    EndpointRemoved,
    /// The endpoint answered 410 Gone to another delivery and was disabled.
    EndpointDisabled,
}

impl DeliveryError {
    /// The class as stored and shown (`timeout`, `connect`, `tls`, `http 500`, …).
    #[must_use]
    pub fn class(self) -> String {
        match self {
            Self::Timeout => "timeout".into(),
            Self::Connect => "connect".into(),
            Self::Tls => "tls".into(),
            Self::Http(status) => format!("http {status}"),
            Self::Body => "body".into(),
            Self::Redirect => "redirect".into(),
            Self::Request => "request".into(),
            Self::EventGone => "event-gone".into(),
            Self::EndpointRemoved => "endpoint-removed".into(),
            Self::EndpointDisabled => "endpoint-disabled".into(),
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.class())
    }
}

/// Why a delivery was refused by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("a webhook-id, webhook-timestamp or webhook-signature header is missing")]
    MissingHeader,
    #[error("webhook-timestamp is not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes away from now")]
    TimestampOutOfTolerance,
    #[error("no valid v1 signature")]
    NoMatchingSignature,
}

/// Verifies a delivery as a receiver should: the headers must all be present, the
/// timestamp within ±5 minutes of `now_secs`, and one of the space-separated `v1,`
/// signatures must be the full, correct HMAC. An empty or truncated signature (`v1,`)
/// never passes.
///
/// # Errors
/// Which check failed.
pub fn verify(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return Err(VerifyError::MissingHeader);
    };
    if id.is_empty() {
        return Err(VerifyError::MissingHeader);
    }
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    // abs_diff, not `(now - ts).abs()`: the timestamp is the sender's text, and one near
    // i64::MIN overflowed the subtraction (a panic, found by the fuzzer).
    if now_secs.abs_diff(ts) > TOLERANCE_SECS.unsigned_abs() {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    for candidate in signature.split(' ') {
        let Some(b64) = candidate.strip_prefix("v1,") else { continue };
        let Ok(bytes) = STANDARD.decode(b64) else { continue };
        // verify_slice compares in constant time and refuses any length but the full 32.
        if !bytes.is_empty() && mac(key, id, ts, body).verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const EXPECTED: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn delivery_errors_are_short_classes() {
        assert_eq!(DeliveryError::Http(500).to_string(), "http 500");
        assert_eq!(DeliveryError::Connect.class(), "connect");
        assert_eq!(DeliveryError::EventGone.class(), "event-gone");
    }

    #[test]
    fn the_standard_webhooks_test_vector() {
        let key = secret_key(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn verify_accepts_the_real_signature_only() {
        let key = secret_key(SECRET).unwrap();
        let ok = |sig: &str, now: i64| verify(&key, Some(ID), Some(&TS.to_string()), Some(sig), BODY, now);
        assert_eq!(ok(EXPECTED, TS), Ok(()));
        assert_eq!(ok(&format!("v1,bogus {EXPECTED}"), TS + 299), Ok(()));
        assert_eq!(ok("v1,", TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok("", TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok(&EXPECTED[..20], TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw", TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok("v1,AAAA", TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok(&EXPECTED.replace('t', "u"), TS), Err(VerifyError::NoMatchingSignature));
        assert_eq!(ok(EXPECTED, TS + 301), Err(VerifyError::TimestampOutOfTolerance));
        assert_eq!(ok(EXPECTED, TS - 301), Err(VerifyError::TimestampOutOfTolerance));
        assert_eq!(verify(&key, None, Some("1"), Some(EXPECTED), BODY, TS), Err(VerifyError::MissingHeader));
        assert_eq!(verify(&key, Some(ID), Some("soon"), Some(EXPECTED), BODY, TS), Err(VerifyError::BadTimestamp));
        // Timestamps at the ends of i64 are refused, not an overflow.
        for far in [i64::MIN.to_string(), i64::MAX.to_string()] {
            assert_eq!(
                verify(&key, Some(ID), Some(&far), Some(EXPECTED), BODY, TS),
                Err(VerifyError::TimestampOutOfTolerance)
            );
        }
        assert_eq!(ok(EXPECTED, i64::MIN), Err(VerifyError::TimestampOutOfTolerance));
        let other = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            verify(&other, Some(ID), Some(&TS.to_string()), Some(EXPECTED), BODY, TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }
}
