//! The Redis calls of an enqueue: a batch cut into `enqueue.lua` calls (one stream each,
//! bounded in jobs and bytes), each call's keys and arguments, and its replies.

use super::{Enqueued, Prepared, Producer, ProducerError};
use crate::domain::Lane;
use crate::scripts::ENQUEUE;
use crate::stream;
use redis::Value;
use std::sync::Arc;

/// Most jobs in one enqueue.lua call, and most payload bytes: a call is one unit of work for
/// Redis (every other client waits while it runs), so a batch is cut into calls of about a
/// millisecond.
const PER_CALL: usize = 64;
const PER_CALL_BYTES: usize = 1 << 20;

/// The stream a prepared job is written to: (partition, lane, tenant for bulk).
type StreamOf<'a> = (u16, Lane, Option<&'a str>);

pub(super) fn stream_of(p: &Prepared) -> StreamOf<'_> {
    let tenant = match p.lane {
        Lane::Bulk => p.email.tenant.as_deref(),
        Lane::Tx => None,
    };
    (p.partition, p.lane, tenant)
}

/// Indexes into `chunk` grouped by stream, in order within a stream, cut at [`PER_CALL`] jobs
/// or [`PER_CALL_BYTES`]: one enqueue.lua call each.
pub(super) fn enqueue_batches(chunk: &[Prepared]) -> Vec<Vec<usize>> {
    // Per stream: its jobs so far in the open call, and their payload bytes.
    let mut open: Vec<(StreamOf<'_>, Vec<usize>, usize)> = Vec::new();
    let mut done = Vec::new();
    for (i, p) in chunk.iter().enumerate() {
        let key = stream_of(p);
        let at = match open.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                open.push((key, Vec::new(), 0));
                open.len() - 1
            }
        };
        let (_, ids, bytes) = &mut open[at];
        if !ids.is_empty()
            && (ids.len() >= PER_CALL || *bytes + p.payload_json.len() > PER_CALL_BYTES)
        {
            done.push(std::mem::take(ids));
            *bytes = 0;
        }
        ids.push(i);
        *bytes += p.payload_json.len();
    }
    done.extend(
        open.into_iter()
            .map(|(_, ids, _)| ids)
            .filter(|v| !v.is_empty()),
    );
    done
}

impl Producer {
    /// The stream a prepared job is written to, and its lane's delayed set.
    pub(super) fn stream_keys(&self, p: &Prepared) -> (String, String) {
        let (partition, lane, tenant) = stream_of(p);
        let stream = self.keys.source(&stream::Source {
            partition,
            lane,
            tenant: tenant.map(Arc::from),
        });
        (stream, self.keys.delayed_of(partition, lane))
    }

    /// A prepared job's dedup marker, in its tenant's namespace (a placeholder key for a job
    /// without one: enqueue.lua and unenqueue.lua touch it only with a key).
    pub(super) fn dedup_key(&self, p: &Prepared) -> String {
        let idem = p.idempotency_key.as_deref().unwrap_or("");
        let idem = if idem.is_empty() { "-" } else { idem };
        self.keys
            .dedup_for(p.partition, p.email.tenant.as_deref(), idem)
    }

    /// One enqueue.lua call for the jobs `batch` names (indexes into `chunk`, one stream).
    pub(super) fn enqueue_cmd(
        &self,
        chunk: &[Prepared],
        batch: &[usize],
        ttl_ms: u64,
    ) -> redis::Cmd {
        let first = &chunk[batch[0]];
        let (partition, lane, tenant) = stream_of(first);
        let (stream, delayed) = self.stream_keys(first);
        let mut keys = vec![
            self.dedup_key(first),
            stream,
            delayed,
            self.keys.bulk_ring(partition),
            self.keys.bulk_bell(partition),
        ];
        keys.extend(batch[1..].iter().map(|&i| self.dedup_key(&chunk[i])));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut c = ENQUEUE.call(&refs);
        c.arg(first.id.to_string())
            .arg(first.idempotency_key.as_deref().unwrap_or(""))
            .arg(first.enqueued_at_ms)
            .arg(&first.payload_json)
            .arg(ttl_ms)
            .arg(first.due_ms)
            .arg(lane.as_str())
            .arg(tenant.unwrap_or(""))
            .arg(crate::stream::GROUP);
        for &i in &batch[1..] {
            let p = &chunk[i];
            c.arg(p.id.to_string())
                .arg(p.idempotency_key.as_deref().unwrap_or(""))
                .arg(p.enqueued_at_ms)
                .arg(&p.payload_json)
                .arg(p.due_ms);
        }
        c
    }
}

/// `{ id, added, id, added, ... }` from enqueue.lua.
pub(super) fn parse_replies(v: &Value) -> Result<Vec<Enqueued>, ProducerError> {
    let Value::Array(items) = v else {
        return Err(ProducerError::Protocol(format!("{v:?}")));
    };
    items
        .chunks(2)
        .map(|pair| parse_reply(&Value::Array(pair.to_vec())))
        .collect()
}

fn parse_reply(v: &Value) -> Result<Enqueued, ProducerError> {
    if let Value::Array(items) = v
        && let [Value::BulkString(id), Value::Int(added)] = items.as_slice()
    {
        let id = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ProducerError::Protocol("job id is not a UUID".into()))?;
        return Ok(Enqueued {
            id,
            added: *added == 1,
        });
    }
    Err(ProducerError::Protocol(format!("{v:?}")))
}
