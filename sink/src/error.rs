//! The sink's errors: whose problem, and whether a retry can help.

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl SinkError {
    /// A connection or server failure may pass; a bad setting or a constraint violation will not.
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Config(_) | SinkError::Schema(_) => false,
            SinkError::Database(e) => {
                matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed)
                    || e.as_database_error().is_some_and(|d| {
                        // Class 08: connection exceptions; 57P: operator intervention (shutdown, restart).
                        d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
                    })
            }
            SinkError::Kafka(_) => true,
        }
    }

    /// Process exit code: 2 for the user's mistakes, 3 for failures outside the sink.
    pub fn exit_code(&self) -> u8 {
        match self {
            SinkError::Config(_) | SinkError::Schema(_) => 2,
            SinkError::Database(_) | SinkError::Kafka(_) => 3,
        }
    }
}
