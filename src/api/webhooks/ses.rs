//! SES events, delivered through an SNS topic (verified by [`super::sns`]): one event per
//! recipient of a notification.

use super::{Refused, job_id, recipient};
use crate::store::webhooks::{Event, Kind};
use serde_json::Value;

/// SES events in an SNS notification's `Message`: event publishing (`eventType`) or the older
/// identity notifications (`notificationType`). One event per recipient, keyed by the SNS
/// MessageId and the recipient's position.
pub fn ses_events(message_id: &str, message: &str) -> Result<Vec<Event>, Refused> {
    let v: Value = serde_json::from_str(message).map_err(|e| Refused::Malformed(e.to_string()))?;
    let kind = v["eventType"]
        .as_str()
        .or_else(|| v["notificationType"].as_str())
        .ok_or(Refused::Missing("eventType"))?;
    let job = job_id(&v["mail"]["tags"]["mailfleet_id"][0]);
    let (kind, rcpts): (Kind, Vec<&Value>) = match kind {
        "Bounce" => {
            let permanent = v["bounce"]["bounceType"].as_str() == Some("Permanent");
            let r = v["bounce"]["bouncedRecipients"].as_array();
            (
                if permanent {
                    Kind::HardBounce
                } else {
                    Kind::Other
                },
                r.map(|a| a.iter().map(|x| &x["emailAddress"]).collect())
                    .unwrap_or_default(),
            )
        }
        "Complaint" => {
            let r = v["complaint"]["complainedRecipients"].as_array();
            (
                Kind::Complaint,
                r.map(|a| a.iter().map(|x| &x["emailAddress"]).collect())
                    .unwrap_or_default(),
            )
        }
        "Delivery" => {
            let r = v["delivery"]["recipients"].as_array();
            (
                Kind::Delivered,
                r.map(|a| a.iter().collect()).unwrap_or_default(),
            )
        }
        _ => (Kind::Other, Vec::new()),
    };
    if rcpts.is_empty() {
        return Ok(vec![Event {
            provider: "ses",
            event_id: format!("{message_id}:0"),
            kind,
            job_id: job,
            recipient: None,
        }]);
    }
    Ok(rcpts
        .into_iter()
        .enumerate()
        .map(|(i, r)| Event {
            provider: "ses",
            event_id: format!("{message_id}:{i}"),
            kind,
            job_id: job,
            recipient: recipient(r),
        })
        .collect())
}
