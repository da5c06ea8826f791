//! Timestamps as written into records: RFC 3339, UTC, milliseconds.
//!
//! RFC 3339 has four-digit years, so only 1970-01-01 through 9999-12-31 can be written (humantime
//! panics outside that range, and a stream id is anyone's input): every formatting here checks the
//! range first and says `None` instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use core_events::record::MAX_RECORDABLE_MS;

/// Now, as written into records. A clock outside the recordable range (set before 1970, or past
/// 9999) gives the nearest end of the range rather than stopping the agent.
pub fn now_rfc3339() -> String {
    let now = SystemTime::now();
    let clamped = if now < UNIX_EPOCH {
        UNIX_EPOCH
    } else {
        now.min(UNIX_EPOCH + Duration::from_millis(MAX_RECORDABLE_MS))
    };
    rfc3339_millis(clamped).unwrap_or_default()
}

/// `t` in RFC 3339 with milliseconds, or `None` when it is outside 1970–9999.
pub fn rfc3339_millis(t: SystemTime) -> Option<String> {
    let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis();
    if ms > u128::from(MAX_RECORDABLE_MS) {
        return None;
    }
    Some(humantime::format_rfc3339_millis(t).to_string())
}

/// When a queue entry was added, from its stream id (`<unix ms>-<seq>`).
pub fn rfc3339_of_stream_id(id: &str) -> Option<String> {
    let ms: u64 = id.split_once('-')?.0.parse().ok()?;
    rfc3339_millis(UNIX_EPOCH.checked_add(Duration::from_millis(ms))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_time() {
        assert_eq!(
            rfc3339_of_stream_id("1700000000123-4").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(rfc3339_of_stream_id("x"), None);
    }

    #[test]
    fn times_outside_four_digit_years_are_none_not_a_panic() {
        assert_eq!(
            rfc3339_of_stream_id(&format!("{MAX_RECORDABLE_MS}-0")).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        for id in [
            "253402300800000-0",
            "18446744073709551615-18446744073709551615",
        ] {
            assert_eq!(rfc3339_of_stream_id(id), None, "{id}");
        }
        assert_eq!(rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert!(!now_rfc3339().is_empty());
    }
}
