//! Job identity and lanes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A job's id: a UUIDv7 made by the producer, so ids sort by creation time and need no
/// coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(u: Uuid) -> Self {
        JobId(u)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// The two delivery lanes. `Tx` (transactional: password resets, receipts) is always served
/// before `Bulk` (newsletters, digests) by every worker.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    #[default]
    Tx,
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Tx, Lane::Bulk];
    /// The lane's place in [`Lane::ALL`]: for per-lane arrays (`[tx, bulk]`).
    pub fn index(self) -> usize {
        match self {
            Lane::Tx => 0,
            Lane::Bulk => 1,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Tx => "tx",
            Lane::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown lane {0:?}: expected \"tx\" or \"bulk\"")]
pub struct LaneParseError(pub String);

impl FromStr for Lane {
    type Err = LaneParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tx" => Ok(Lane::Tx),
            "bulk" => Ok(Lane::Bulk),
            other => Err(LaneParseError(other.to_owned())),
        }
    }
}
