//! Postmark's webhooks (basic auth, checked in `mod.rs`): the event each one carries.

use super::{job_id, recipient};
use crate::store::webhooks::{Event, Kind};
use serde_json::Value;

pub fn postmark_event(v: &Value) -> Option<Event> {
    let (kind, id) = match v["RecordType"].as_str()? {
        "Delivery" => (
            Kind::Delivered,
            format!("delivery:{}", v["MessageID"].as_str()?),
        ),
        "Bounce" => {
            let hard = matches!(v["Type"].as_str(), Some("HardBounce" | "BadEmailAddress"));
            let kind = if hard { Kind::HardBounce } else { Kind::Other };
            (kind, format!("bounce:{}", v["ID"].as_i64()?))
        }
        "SpamComplaint" => (Kind::Complaint, format!("complaint:{}", v["ID"].as_i64()?)),
        other => (Kind::Other, format!("{other}:{}", v["MessageID"].as_str()?)),
    };
    let rcpt = if v["Recipient"].is_string() {
        &v["Recipient"]
    } else {
        &v["Email"]
    };
    Some(Event {
        provider: "postmark",
        event_id: id,
        kind,
        job_id: job_id(&v["Metadata"]["mailfleet_id"]),
        recipient: recipient(rcpt),
    })
}
