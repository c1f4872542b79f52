//! Domain types: what an email job *is*, independent of Redis, Postgres or HTTP.
//!
//! Every type here parses instead of validating: an [`Address`] exists only if it is a valid,
//! header-safe mailbox; an [`Email`] only if every field passed. Producers, the API and the
//! worker all go through the same parsers, so a job the API accepts is a job the worker can send,
//! and a job from a foreign producer that would not parse is dead-lettered, never sent.
//! No I/O happens in this module.

mod address;
mod email;
mod job;
mod secret;
mod status;
mod tenant;

pub use address::{Address, AddressError, Mailbox};
pub use email::{
    Content, Email, FieldError, HeaderName, MAX_RECIPIENTS, MAX_SUBJECT_LEN, Payload,
    ValidationErrors,
};
pub use job::{JobId, Lane, LaneParseError};
pub use secret::Secret;
pub use status::{Status, StatusParseError};
pub use tenant::{MAX_TENANT_LEN, TenantError, check_tenant, parse_tenant};

/// True when `s` contains a byte that could split or smuggle a header line.
pub fn has_header_breaking_char(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// A span written `<n><unit>` with unit `s`, `m`, `h` or `d` (`90s`, `30m`, `2h`, `7d`), in
/// seconds; `None` for anything else or on overflow.
pub fn parse_span(s: &str) -> Option<i64> {
    let s = s.trim();
    // The unit is the last character, whatever its width (`5é` is refused, not a panic).
    let (at, _) = s.char_indices().last()?;
    let (num, unit) = s.split_at(at);
    let n: i64 = num.parse().ok().filter(|n| *n >= 0)?;
    match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_span;

    #[test]
    fn a_span_has_a_number_and_a_unit_and_anything_else_is_none() {
        assert_eq!(parse_span("90s"), Some(90));
        assert_eq!(parse_span(" 2h "), Some(7200));
        assert_eq!(parse_span("7d"), Some(604_800));
        // A non-ASCII unit was a panic (a split inside a character).
        for bad in ["5é", "é", "", "s", "-1s", "5x", "99999999999999999999d"] {
            assert_eq!(parse_span(bad), None, "{bad:?}");
        }
    }
}
