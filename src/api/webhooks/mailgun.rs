//! Mailgun's webhooks: HMAC-SHA256 of `timestamp + token` (each token accepted once), and
//! the event it carries.

use super::{Refused, job_id, recipient};
use crate::store::webhooks::{Event, Kind};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Mailgun: hex HMAC-SHA256 of `timestamp + token` with the signing key (constant-time check).
pub fn verify_mailgun(
    key: &str,
    timestamp: &str,
    token: &str,
    signature: &str,
) -> Result<(), Refused> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| Refused::BadSignature)?;
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let sig = hex::decode(signature.trim()).map_err(|_| Refused::BadSignature)?;
    mac.verify_slice(&sig).map_err(|_| Refused::BadSignature)
}

pub fn mailgun_event(v: &Value) -> Option<Event> {
    let d = &v["event-data"];
    let kind = match (d["event"].as_str()?, d["severity"].as_str()) {
        ("delivered", _) => Kind::Delivered,
        ("failed", Some("permanent")) => Kind::HardBounce,
        ("complained", _) => Kind::Complaint,
        _ => Kind::Other,
    };
    Some(Event {
        provider: "mailgun",
        event_id: d["id"].as_str()?.to_owned(),
        kind,
        job_id: job_id(&d["user-variables"]["mailfleet_id"]),
        recipient: recipient(&d["recipient"]),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fresh;
    use super::*;

    #[test]
    fn mailgun_hmac_and_the_time_window() {
        let mut m = Hmac::<Sha256>::new_from_slice(b"key-1").unwrap();
        m.update(b"1700000000tok");
        let sig = hex::encode(m.finalize().into_bytes());
        assert_eq!(verify_mailgun("key-1", "1700000000", "tok", &sig), Ok(()));
        assert_eq!(
            verify_mailgun("key-2", "1700000000", "tok", &sig),
            Err(Refused::BadSignature)
        );
        assert_eq!(fresh("1700000000", 300, 1700000299), Ok(()));
        assert_eq!(fresh("1700000000", 300, 1700000301), Err(Refused::Stale));
    }
}
