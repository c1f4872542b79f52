//! Why a webhook request was refused: the one error every vendor's check returns.

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the tolerance window")]
    Stale,
    #[error("token already used")]
    Replayed,
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
