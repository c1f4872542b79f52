//! Wire format v1: the contract with producers in any language (docs/stream-format.md).
//!
//! An entry has the fields `v` = "1", `id` (UUID), optional `idem`, `enqueued_at` (unix ms),
//! `payload` (JSON, see [`Payload`]) and, on a job replayed from the dead-letter stream,
//! `replays` (how often). Every place that rebuilds an entry (the delayed set, promote.lua,
//! the reconciler) carries `replays`, so `dlq replay --max-replays` holds for good. [`decode`] turns a raw entry into a [`Job`] or a
//! [`DecodeError`] whose [`DecodeError::reason`] is a short, bounded code for the dead-letter
//! stream and metrics.

use crate::domain::{Email, JobId, Lane, Payload, ValidationErrors};
use redis::Value;
use std::sync::Arc;

pub const VERSION: &str = "1";

/// One stream entry as Redis returned it, before any interpretation.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub lane: Lane,
    pub partition: u16,
    /// The tenant whose bulk stream holds the entry; `None` for the lane's shared stream.
    pub stream_tenant: Option<Arc<str>>,
    pub entry_id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A decoded, validated job.
#[derive(Debug, Clone)]
pub struct Job {
    pub lane: Lane,
    pub partition: u16,
    /// The tenant whose bulk stream held the entry (`RawEntry::stream_tenant`).
    pub stream_tenant: Option<Arc<str>>,
    pub entry_id: String,
    pub id: JobId,
    pub idem: Option<String>,
    pub enqueued_at_ms: i64,
    /// How often the job was replayed from the dead-letter stream (0 for most).
    pub replays: u32,
    /// The payload JSON exactly as enqueued (kept for Postgres and for re-enqueue).
    pub payload_json: String,
    pub email: Email,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("field {0:?} is missing")]
    MissingField(&'static str),
    #[error("field {0:?} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("unknown wire version {0:?}; this worker understands \"1\"")]
    UnknownVersion(String),
    #[error("id is not a UUID")]
    BadId,
    #[error("enqueued_at is not a unix-ms integer")]
    BadEnqueuedAt,
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not valid JSON for wire format v1: {0}")]
    BadJson(String),
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

/// Every code [`DecodeError::reason`] gives.
pub const DECODE_REASONS: [&str; 8] = [
    "missing_field",
    "not_utf8",
    "unknown_version",
    "bad_id",
    "bad_enqueued_at",
    "too_large",
    "bad_json",
    "invalid_email",
];

impl DecodeError {
    /// A bounded reason code, for the dead-letter entry and metric labels (one of
    /// [`DECODE_REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::BadId => "bad_id",
            DecodeError::BadEnqueuedAt => "bad_enqueued_at",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::Invalid(_) => "invalid_email",
        }
    }
}

impl RawEntry {
    /// The stream the entry was read from (acks, retries and dead letters go back to it).
    pub fn source(&self) -> super::Source {
        super::Source {
            partition: self.partition,
            lane: self.lane,
            tenant: self.stream_tenant.clone(),
        }
    }
    fn field(&self, name: &'static str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
    fn text(&self, name: &'static str) -> Result<Option<&str>, DecodeError> {
        self.field(name)
            .map(|b| std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8(name)))
            .transpose()
    }
    fn required(&self, name: &'static str) -> Result<&str, DecodeError> {
        self.text(name)?.ok_or(DecodeError::MissingField(name))
    }
    /// The job id, if the entry has a readable one (even when the rest is broken).
    pub fn job_id(&self) -> Option<JobId> {
        self.text("id").ok().flatten().and_then(|s| s.parse().ok())
    }
}

/// Decode and validate one entry. `max_payload` bounds the payload's size in bytes.
pub fn decode(raw: &RawEntry, max_payload: usize) -> Result<Job, DecodeError> {
    let v = raw.required("v")?;
    if v != VERSION {
        return Err(DecodeError::UnknownVersion(v.chars().take(16).collect()));
    }
    let id: JobId = raw
        .required("id")?
        .parse()
        .map_err(|_| DecodeError::BadId)?;
    let enqueued_at_ms: i64 = raw
        .required("enqueued_at")?
        .parse()
        .map_err(|_| DecodeError::BadEnqueuedAt)?;
    let idem = raw
        .text("idem")?
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    // Written only by dlq_replay.lua and by the rebuilds below; an unreadable count is 0.
    let replays = raw
        .text("replays")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let payload_bytes = raw
        .field("payload")
        .ok_or(DecodeError::MissingField("payload"))?;
    if payload_bytes.len() > max_payload {
        return Err(DecodeError::TooLarge {
            size: payload_bytes.len(),
            limit: max_payload,
        });
    }
    let payload_json = std::str::from_utf8(payload_bytes)
        .map_err(|_| DecodeError::NotUtf8("payload"))?
        .to_owned();
    let payload: Payload =
        serde_json::from_str(&payload_json).map_err(|e| DecodeError::BadJson(e.to_string()))?;
    let email = Email::try_from(payload)?;
    email.check_lane(raw.lane)?;
    Ok(Job {
        lane: raw.lane,
        partition: raw.partition,
        stream_tenant: raw.stream_tenant.clone(),
        entry_id: raw.entry_id.clone(),
        id,
        idem,
        enqueued_at_ms,
        replays,
        payload_json,
        email,
    })
}

/// Parse a list of stream entries (`[[id, [k, v, ...]], ...]`) from a Redis reply.
/// The milliseconds part of a stream entry ID (`<ms>-<seq>`): when Redis added the entry.
pub fn entry_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

pub fn parse_entries(v: &Value, source: &super::Source) -> Vec<RawEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let [id, fields] = pair.as_slice() else {
                return None;
            };
            let entry_id = bytes_of(id).and_then(|b| String::from_utf8(b.to_vec()).ok())?;
            let fields = match fields {
                Value::Array(kv) => kv
                    .chunks_exact(2)
                    .filter_map(|c| Some((bytes_of(&c[0])?.to_vec(), bytes_of(&c[1])?.to_vec())))
                    .collect(),
                // A deleted entry still pending in the PEL comes back with nil fields.
                _ => Vec::new(),
            };
            Some(RawEntry {
                lane: source.lane,
                partition: source.partition,
                stream_tenant: source.tenant.clone(),
                entry_id,
                fields,
            })
        })
        .collect()
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The stream fields of a job, in wire order, for XADD or a delayed-set member.
pub fn encode_fields(
    id: JobId,
    idem: Option<&str>,
    enqueued_at_ms: i64,
    payload: &str,
    replays: u32,
) -> Vec<(&'static str, String)> {
    let mut f = vec![("v", VERSION.to_owned()), ("id", id.to_string())];
    if let Some(k) = idem {
        f.push(("idem", k.to_owned()));
    }
    f.push(("enqueued_at", enqueued_at_ms.to_string()));
    f.push(("payload", payload.to_owned()));
    if replays > 0 {
        f.push(("replays", replays.to_string()));
    }
    f
}

/// A delayed-set member (see lua/promote.lua): the job's fields plus its lane, as JSON.
pub fn delayed_member(job: &Job) -> String {
    member_of(&Member {
        id: job.id,
        idem: job.idem.as_deref(),
        enqueued_at_ms: job.enqueued_at_ms,
        payload: &job.payload_json,
        lane: job.lane,
        tenant: job.email.tenant.as_deref(),
        replays: job.replays,
    })
}

/// What a delayed-set member carries.
pub struct Member<'a> {
    pub id: JobId,
    pub idem: Option<&'a str>,
    pub enqueued_at_ms: i64,
    pub payload: &'a str,
    pub lane: Lane,
    pub tenant: Option<&'a str>,
    pub replays: u32,
}

/// A delayed-set member (JSON, the form `lua/promote.lua` decodes).
pub fn member_of(m: &Member<'_>) -> String {
    let mut v = serde_json::json!({
        "v": VERSION,
        "id": m.id.to_string(),
        "idem": m.idem.unwrap_or(""),
        "enqueued_at": m.enqueued_at_ms.to_string(),
        "payload": m.payload,
        "lane": m.lane.as_str(),
    });
    // Bulk comes back to its tenant's stream (lua/promote.lua), so a retry keeps its fair place.
    if m.lane == Lane::Bulk
        && let Some(t) = m.tenant
    {
        v["tenant"] = t.into();
    }
    if m.replays > 0 {
        v["replays"] = m.replays.to_string().into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fields: &[(&str, &[u8])]) -> RawEntry {
        RawEntry {
            lane: Lane::Tx,
            partition: 0,
            stream_tenant: None,
            entry_id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        }
    }
    const PAYLOAD: &[u8] =
        br#"{"to":["a@example.com"],"from":"b@example.com","subject":"s","text":"t"}"#;
    const ID: &[u8] = b"01890a5d-ac96-774b-bcce-b302099a8057";

    #[test]
    fn decodes_a_valid_entry() {
        let j = decode(
            &raw(&[
                ("v", b"1"),
                ("id", ID),
                ("enqueued_at", b"1700000000000"),
                ("payload", PAYLOAD),
            ]),
            1 << 20,
        )
        .unwrap();
        assert_eq!(j.enqueued_at_ms, 1_700_000_000_000);
        assert_eq!(j.idem, None);
        assert_eq!(j.replays, 0);
    }

    #[test]
    fn the_replay_count_survives_every_rebuild_of_an_entry() {
        let j = decode(
            &raw(&[
                ("v", b"1"),
                ("id", ID),
                ("enqueued_at", b"1700000000000"),
                ("payload", PAYLOAD),
                ("replays", b"2"),
            ]),
            1 << 20,
        )
        .unwrap();
        assert_eq!(j.replays, 2, "decoded");
        let member: serde_json::Value = serde_json::from_str(&delayed_member(&j)).unwrap();
        assert_eq!(member["replays"], "2", "in the delayed set");
        let fields = encode_fields(j.id, None, j.enqueued_at_ms, &j.payload_json, j.replays);
        assert!(
            fields.contains(&("replays", "2".to_owned())),
            "in a re-enqueued entry"
        );
        // The reconciler's rebuild decodes back to the same count.
        let again = RawEntry {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                .collect(),
            ..raw(&[])
        };
        assert_eq!(decode(&again, 1 << 20).unwrap().replays, 2);
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let cases: Vec<(RawEntry, &str)> = vec![
            (
                raw(&[("id", ID), ("enqueued_at", b"1"), ("payload", PAYLOAD)]),
                "missing_field",
            ),
            (
                raw(&[
                    ("v", b"2"),
                    ("id", ID),
                    ("enqueued_at", b"1"),
                    ("payload", PAYLOAD),
                ]),
                "unknown_version",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", b"nope"),
                    ("enqueued_at", b"1"),
                    ("payload", PAYLOAD),
                ]),
                "bad_id",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", ID),
                    ("enqueued_at", b"x"),
                    ("payload", PAYLOAD),
                ]),
                "bad_enqueued_at",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", ID),
                    ("enqueued_at", b"1"),
                    ("payload", b"{not json"),
                ]),
                "bad_json",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", ID),
                    ("enqueued_at", b"1"),
                    ("payload", b"\xff\xfe"),
                ]),
                "not_utf8",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", ID),
                    ("enqueued_at", b"1"),
                    ("payload", &[b' '; 100]),
                ]),
                "too_large",
            ),
            (
                raw(&[
                    ("v", b"1"),
                    ("id", ID),
                    ("enqueued_at", b"1"),
                    (
                        "payload",
                        br#"{"to":["bad"],"from":"b@example.com","subject":"s","text":"t"}"#,
                    ),
                ]),
                "invalid_email",
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (entry, reason) in cases {
            assert_eq!(decode(&entry, 90).unwrap_err().reason(), reason);
            assert!(DECODE_REASONS.contains(&reason), "{reason} is listed");
            seen.insert(reason);
        }
        // The list has no code no malformation gives.
        assert_eq!(seen.len(), DECODE_REASONS.len());
    }
}
