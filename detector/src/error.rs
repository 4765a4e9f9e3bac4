//! The detector's errors, each saying whose problem it is and whether trying again can help.

use std::fmt;

/// Who has to act on a failure: the user (fix a flag, a file), the outside world (a camera or a
/// broker that is away), or us (a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    User,
    External,
    Internal,
}

impl fmt::Display for Blame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Blame::User => "user",
            Blame::External => "external",
            Blame::Internal => "internal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("source {uri}: {reason}")]
    Source { uri: String, reason: String, blame: Blame },
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("{reason}")]
    Registry { reason: String, blame: Blame },
    #[error("output: {0}")]
    Output(String),
    /// A bug: a panic caught where a camera's fault is contained.
    #[error("internal error: {0}")]
    Internal(String),
    /// A signal came during start-up: nothing ran, nothing is lost.
    #[error("stopped by a signal during start-up")]
    Stopped,
}

impl DetectorError {
    pub fn blame(&self) -> Blame {
        match self {
            DetectorError::Config(_) | DetectorError::Model { .. } => Blame::User,
            DetectorError::Source { blame, .. } | DetectorError::Registry { blame, .. } => *blame,
            DetectorError::Kafka(_) | DetectorError::Output(_) => Blame::External,
            DetectorError::Inference(_) | DetectorError::Internal(_) => Blame::Internal,
            DetectorError::Stopped => Blame::User,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn retryable(&self) -> bool {
        self.blame() == Blame::External
    }

    /// Process exit code: 2 for the user's mistakes, 3 for the world's, 1 for ours; 0 for a stop
    /// the user asked for.
    pub fn exit_code(&self) -> i32 {
        if let DetectorError::Stopped = self {
            return 0;
        }
        match self.blame() {
            Blame::User => 2,
            Blame::External => 3,
            Blame::Internal => 1,
        }
    }

    /// The URI is shown with its credentials hidden.
    pub fn source(uri: &str, blame: Blame, reason: impl fmt::Display) -> Self {
        DetectorError::Source { uri: common::secret::redact_url(uri), reason: reason.to_string(), blame }
    }

    /// A schema registry's failure: an outage is the world's, a refusal (an incompatible schema
    /// already under the subject, a wrong URL) is for the user to fix.
    pub fn registry(e: common::registry::RegistryError) -> Self {
        let blame = if e.retryable() { Blame::External } else { Blame::User };
        DetectorError::Registry { reason: e.to_string(), blame }
    }

    pub fn model(path: &std::path::Path, reason: impl fmt::Display) -> Self {
        DetectorError::Model { path: path.display().to_string(), reason: reason.to_string() }
    }
}
