//! Property tests for the parsers every untrusted byte passes through: the stream entry decoder
//! and the address/header validators. They must never panic, and whatever they accept must be
//! safe to put in an email header.

use mailfleet::domain::{Address, Lane, Mailbox};
use mailfleet::stream::{RawEntry, wire};
use proptest::prelude::*;

fn raw(fields: Vec<(Vec<u8>, Vec<u8>)>) -> RawEntry {
    RawEntry {
        lane: Lane::Tx,
        partition: 0,
        stream_tenant: None,
        entry_id: "1-0".into(),
        fields,
    }
}

const NAMES: &[&[u8]] = &[
    b"v",
    b"id",
    b"idem",
    b"enqueued_at",
    b"payload",
    b"replays",
    b"x",
];

fn field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::sample::select(NAMES).prop_map(|n| n.to_vec()),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(b"1".to_vec()),
            Just(b"0190a1b2-0000-7000-8000-000000000000".to_vec()),
            "[ -~]{0,80}".prop_map(String::into_bytes),
            json_payload().prop_map(String::into_bytes),
        ],
    )
}

/// Payload-shaped JSON with hostile strings in every header-bound field.
fn json_payload() -> impl Strategy<Value = String> {
    let s = || "[ -~\r\n\u{0}\u{80}-\u{10ffff}]{0,40}";
    (s(), s(), s(), s()).prop_map(|(to, from, subject, text)| {
        serde_json::json!({"to": [to], "from": from, "subject": subject, "text": text}).to_string()
    })
}

fn header_safe(s: &str) -> bool {
    !s.contains(['\r', '\n', '\0'])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_and_accepts_only_header_safe_jobs(fields in prop::collection::vec(field(), 0..8)) {
        if let Ok(job) = wire::decode(&raw(fields), 4096) {
            prop_assert!(job.payload_json.len() <= 4096);
            for m in job.email.to.iter().chain(&job.email.cc).chain(&job.email.bcc) {
                prop_assert!(header_safe(m.address.as_str()));
                prop_assert!(m.address.as_str().len() <= 254);
                prop_assert!(m.name.as_deref().is_none_or(header_safe));
            }
            prop_assert!(header_safe(job.email.from.address.as_str()));
            prop_assert!(job.email.subject.as_deref().is_none_or(header_safe));
        }
    }

    #[test]
    fn well_formed_entries_with_hostile_payloads_are_rejected_or_safe(
        to in prop_oneof!["[a-z]{1,10}@example\\.com", "[a-z]{1,10}@example\\.com[\r\n\u{0}][ -~]{0,10}", "[ -~\r\n]{0,20} <[a-z]{1,5}@x\\.io>"],
        subject in "[ -~\r\n\u{0}]{0,30}",
        text in "[ -~\r\n\u{0}]{0,30}",
    ) {
        let payload = serde_json::json!({"to": [to], "from": "a@example.com", "subject": subject, "text": text}).to_string();
        let fields = wire::encode_fields(mailfleet::JobId::new(), None, 1, &payload, 0)
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        match wire::decode(&raw(fields), 1 << 20) {
            Ok(job) => {
                prop_assert!(job.email.subject.as_deref().is_none_or(header_safe));
                for m in &job.email.to {
                    prop_assert!(header_safe(m.address.as_str()));
                    prop_assert!(m.name.as_deref().is_none_or(header_safe));
                }
            }
            Err(e) => prop_assert!(!e.reason().is_empty()),
        }
    }

    #[test]
    fn an_encoded_job_decodes_to_itself(n in 0u32..1000, lane_tx in any::<bool>()) {
        let payload = serde_json::json!({
            "to": [format!("user{n}@example.com")], "from": "Shop <shop@example.com>",
            "subject": format!("Order {n}"), "text": "hi"
        }).to_string();
        let id = mailfleet::JobId::new();
        let fields = wire::encode_fields(id, Some("k"), 42, &payload, 3)
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        let mut r = raw(fields);
        r.lane = if lane_tx { Lane::Tx } else { Lane::Bulk };
        let job = wire::decode(&r, 1 << 20).expect("a valid entry decodes");
        prop_assert_eq!(job.id, id);
        prop_assert_eq!(job.enqueued_at_ms, 42);
        prop_assert_eq!(job.payload_json, payload);
        prop_assert_eq!(job.idem.as_deref(), Some("k"));
        prop_assert_eq!(job.replays, 3);
    }

    #[test]
    fn accepted_addresses_are_within_rfc5321_and_header_safe(s in "[ -~\r\n\u{0}]{0,300}") {
        if let Ok(a) = Address::parse(&s) {
            let text = a.as_str();
            prop_assert!(header_safe(text));
            prop_assert!(text.len() <= 254);
            let (local, domain) = text.rsplit_once('@').expect("an accepted address has an @");
            prop_assert!(!local.is_empty() && local.len() <= 64);
            prop_assert!(!domain.is_empty());
        }
    }

    #[test]
    fn accepted_mailboxes_are_header_safe(name in "[ -~\r\n\u{0}\u{80}-\u{10ffff}]{0,40}", local in "[a-z.+\r\n]{0,70}") {
        for s in [format!("{name} <{local}@example.com>"), format!("\"{name}\" <{local}@example.com>"), format!("{local}@example.com")] {
            if let Ok(m) = Mailbox::parse(&s) {
                prop_assert!(header_safe(m.address.as_str()));
                prop_assert!(m.name.as_deref().is_none_or(header_safe));
                prop_assert!(m.address.as_str().len() <= 254);
            }
        }
    }
}
