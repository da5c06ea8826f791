//! Timestamps as written into records: RFC 3339, UTC, milliseconds.

use std::time::SystemTime;

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// When a queue entry was added, from its stream id (`<unix ms>-<seq>`).
pub fn rfc3339_of_stream_id(id: &str) -> Option<String> {
    let ms: u64 = id.split_once('-')?.0.parse().ok()?;
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))?;
    Some(humantime::format_rfc3339_millis(t).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_id_time() {
        assert_eq!(
            super::rfc3339_of_stream_id("1700000000123-4").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(super::rfc3339_of_stream_id("x"), None);
    }
}
