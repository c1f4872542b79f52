//! SendGrid's Event Webhook: ECDSA P-256 over `timestamp + raw body`, and its event list.

use super::{Refused, job_id, recipient};
use crate::store::webhooks::{Event, Kind};
use serde_json::Value;

/// SendGrid: ECDSA P-256 / SHA-256 over `timestamp + body`, signature base64 DER.
pub fn verify_sendgrid(
    public_key_b64: &str,
    timestamp: &str,
    body: &[u8],
    signature_b64: &str,
) -> Result<(), Refused> {
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = b64
        .decode(public_key_b64.trim())
        .map_err(|_| Refused::BadSignature)?;
    let key =
        p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|_| Refused::BadSignature)?;
    let sig = b64
        .decode(signature_b64.trim())
        .map_err(|_| Refused::BadSignature)?;
    let sig = p256::ecdsa::Signature::from_der(&sig).map_err(|_| Refused::BadSignature)?;
    let mut msg = Vec::with_capacity(timestamp.len() + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.extend_from_slice(body);
    key.verify(&msg, &sig).map_err(|_| Refused::BadSignature)
}

pub fn sendgrid_events(body: &[u8]) -> Result<Vec<Event>, Refused> {
    let v: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
    Ok(v.iter()
        .filter_map(|e| {
            let kind = match (e["event"].as_str()?, e["type"].as_str()) {
                ("delivered", _) => Kind::Delivered,
                ("bounce", Some("blocked")) => Kind::Other,
                ("bounce", _) => Kind::HardBounce,
                ("spamreport", _) => Kind::Complaint,
                _ => Kind::Other,
            };
            Some(Event {
                provider: "sendgrid",
                event_id: e["sg_event_id"].as_str()?.to_owned(),
                kind,
                job_id: job_id(&e["mailfleet_id"]),
                recipient: recipient(&e["email"]),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector SendGrid's own SDKs test against (public key, signature, timestamp, payload).
    #[test]
    fn verifies_sendgrids_published_vector_and_rejects_changes() {
        let key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
        let sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
        let body =
            br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
        assert_eq!(verify_sendgrid(key, "1588788367", body, sig), Ok(()));
        assert_eq!(
            verify_sendgrid(key, "1388788367", body, sig),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify_sendgrid(key, "1588788367", b"{}", sig),
            Err(Refused::BadSignature)
        );
    }
}
