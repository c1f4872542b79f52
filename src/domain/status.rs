//! [`Status`]: where a job stands. The one list of statuses and the one rule of which are
//! final; Rust code and SQL (bound as parameters, never spelled in a statement) both take them
//! from here. The `emails_status_check` constraint in migrations/ holds the same set, and a
//! test checks that the two agree.

use serde::Serialize;

/// A job's status in the `emails` ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Status {
    /// Accepted (API, fan-out) and not yet claimed by a worker.
    Queued,
    /// Claimed by a worker, which may be sending it now.
    Sending,
    /// The provider took it.
    Sent,
    /// Waiting in the delayed set for another attempt.
    Retrying,
    /// The provider refused it for good (or it could not be rendered or routed).
    Failed,
    /// Attempts or deliveries used up; its entry is in the dead-letter stream.
    Dead,
    /// Every `to` recipient is on the suppression list.
    Suppressed,
    /// Whether it went out cannot be known; an operator decides.
    Unknown,
    /// The provider reported delivery (webhook).
    Delivered,
    /// The provider reported a hard bounce (webhook).
    Bounced,
    /// The recipient complained (webhook).
    Complained,
    /// Another job holds its idempotency key within the dedup window (the Redis marker was
    /// lost): acked and never sent.
    Duplicate,
    /// Cancelled by an operator while it waited; never sent.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 13] = [
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Retrying,
        Status::Failed,
        Status::Dead,
        Status::Suppressed,
        Status::Unknown,
        Status::Delivered,
        Status::Bounced,
        Status::Complained,
        Status::Duplicate,
        Status::Cancelled,
    ];

    /// The statuses after which nothing more happens to a job on its own.
    pub const FINAL: [Status; 10] = [
        Status::Sent,
        Status::Failed,
        Status::Dead,
        Status::Suppressed,
        Status::Unknown,
        Status::Delivered,
        Status::Bounced,
        Status::Complained,
        Status::Duplicate,
        Status::Cancelled,
    ];

    /// The statuses a worker may claim a job from (besides an expired `sending` claim).
    pub const CLAIMABLE: [Status; 2] = [Status::Queued, Status::Retrying];

    /// Not final: the job is still on its way (the reconciler watches these).
    pub const OPEN: [Status; 3] = [Status::Queued, Status::Sending, Status::Retrying];

    /// Final, and the provider took the email (a webhook may still move it on).
    pub const TAKEN: [Status; 4] = [
        Status::Sent,
        Status::Delivered,
        Status::Bounced,
        Status::Complained,
    ];

    pub fn is_final(self) -> bool {
        !Self::OPEN.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Retrying => "retrying",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Suppressed => "suppressed",
            Status::Unknown => "unknown",
            Status::Delivered => "delivered",
            Status::Bounced => "bounced",
            Status::Complained => "complained",
            Status::Duplicate => "duplicate",
            Status::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct StatusParseError(pub String);

impl std::str::FromStr for Status {
    type Err = StatusParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StatusParseError(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_is_final_or_open() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_ne!(s.is_final(), Status::OPEN.contains(&s));
            assert_eq!(s.is_final(), Status::FINAL.contains(&s));
        }
        assert_eq!(Status::FINAL.len() + Status::OPEN.len(), Status::ALL.len());
        assert!("nosuch".parse::<Status>().is_err());
        assert!(Status::TAKEN.iter().all(|s| s.is_final()));
        assert!(Status::CLAIMABLE.iter().all(|s| !s.is_final()));
    }

    #[test]
    fn the_migrations_check_constraint_holds_exactly_these_statuses() {
        // The latest definition of emails_status_check in migrations/ (they run in name order).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("migrations/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        let sql = files
            .iter()
            .rev()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .find(|s| s.contains("emails_status_check CHECK"))
            .expect("a migration defines emails_status_check");
        let check = sql
            .split("CHECK (status IN")
            .nth(1)
            .and_then(|s| s.split("));").next())
            .expect("the constraint");
        let mut listed: Vec<&str> = check.split('\'').skip(1).step_by(2).collect();
        listed.sort_unstable();
        let mut ours: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        ours.sort_unstable();
        assert_eq!(listed, ours);
    }
}
