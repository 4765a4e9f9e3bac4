//! The sink's errors: whose problem, and whether a retry can help.

use common::kafka::may_heal;
use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database cannot be reached at start: it may come up.
    #[error("{0}")]
    DatabaseAway(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A message that could be neither stored nor dead-lettered: someone must fix the topic.
    #[error("dead-letter topic {topic} refuses the message at partition {partition}, offset {offset}: {error}; fix the topic (size limit, ACL) and restart")]
    DeadLetterRefused { topic: String, partition: i32, offset: i64, error: KafkaError },
    /// The loop broke one of its own rules (a bug): it stops before storing anything past it.
    #[error("internal error: {0}; nothing past the last stored offset was stored, so a restart is safe")]
    Invariant(String),
    /// Work given up because the sink is shutting down; it is done again at the next start.
    #[error("stopped by the shutdown")]
    Stopped,
}

/// What a database error means for the rows that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// The server or the connection, for now: the same write may succeed later.
    Transient,
    /// Something in the rows themselves (a constraint, a value the column or encoding cannot
    /// hold): the same rows will always fail, others will not.
    Rows,
    /// Neither passes by itself nor lies in the rows (permissions, a missing table, a bug).
    Fatal,
}

/// Classifies a PostgreSQL SQLSTATE (https://www.postgresql.org/docs/current/errcodes-appendix.html).
pub fn classify_sqlstate(code: &str) -> DbFault {
    match code {
        // Serialization failure, deadlock, statement completion unknown: retry the transaction.
        "40001" | "40P01" | "40003" => DbFault::Transient,
        // Lock timeout (lock_not_available) and query cancel (statement_timeout).
        "55P03" | "57014" => DbFault::Transient,
        // A standby promoted late, or a primary demoted: read-only for now.
        "25006" => DbFault::Transient,
        _ if code.starts_with("08") => DbFault::Transient,  // connection exceptions
        _ if code.starts_with("53") => DbFault::Transient,  // insufficient resources: too many connections, disk full, memory
        _ if code.starts_with("57P") => DbFault::Transient, // operator intervention: shutdown, restart
        _ if code.starts_with("58") => DbFault::Transient,  // system errors (I/O)
        // Data exceptions and integrity violations (a key conflict, 23505, is merged before this).
        _ if code.starts_with("22") || code.starts_with("23") => DbFault::Rows,
        _ => DbFault::Fatal,
    }
}

impl SinkError {
    /// What a database error means; other errors are not the database's.
    pub fn db_fault(&self) -> Option<DbFault> {
        let SinkError::Database(e) = self else { return None };
        Some(match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => DbFault::Transient,
            sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => DbFault::Fatal,
            _ => match e.as_database_error().and_then(|d| d.code()) {
                Some(code) => classify_sqlstate(&code),
                None => DbFault::Fatal,
            },
        })
    }

    /// A connection or server failure may pass; a bad setting or a constraint violation will not.
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Config(_) | SinkError::Schema(_) | SinkError::DeadLetterRefused { .. } | SinkError::Stopped => false,
            SinkError::Database(_) => self.db_fault() == Some(DbFault::Transient),
            SinkError::DatabaseAway(_) | SinkError::Invariant(_) => true,
            SinkError::Kafka(e) => may_heal(e),
        }
    }

    /// Process exit code: 2 for the user's mistakes, 3 for failures outside the sink.
    pub fn exit_code(&self) -> u8 {
        match self {
            SinkError::Config(_) | SinkError::Schema(_) => 2,
            SinkError::Database(_)
            | SinkError::DatabaseAway(_)
            | SinkError::Kafka(_)
            | SinkError::DeadLetterRefused { .. }
            | SinkError::Invariant(_)
            | SinkError::Stopped => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_whether_waiting_or_other_rows_help() {
        let cases = [
            ("40001", DbFault::Transient, "serialization failure"),
            ("40P01", DbFault::Transient, "deadlock"),
            ("53300", DbFault::Transient, "too many connections"),
            ("53100", DbFault::Transient, "disk full"),
            ("55P03", DbFault::Transient, "lock timeout"),
            ("57014", DbFault::Transient, "query cancelled (statement timeout)"),
            ("25006", DbFault::Transient, "read-only transaction after a failover"),
            ("57P01", DbFault::Transient, "admin shutdown"),
            ("57P03", DbFault::Transient, "cannot connect now"),
            ("08006", DbFault::Transient, "connection failure"),
            ("58030", DbFault::Transient, "I/O error"),
            ("23514", DbFault::Rows, "a CHECK constraint"),
            ("23502", DbFault::Rows, "NOT NULL"),
            ("23503", DbFault::Rows, "a foreign key"),
            ("22P05", DbFault::Rows, "untranslatable character"),
            ("22021", DbFault::Rows, "character not in repertoire"),
            ("22003", DbFault::Rows, "numeric value out of range"),
            ("22001", DbFault::Rows, "string too long"),
            ("42501", DbFault::Fatal, "permission denied"),
            ("42P01", DbFault::Fatal, "undefined table"),
            ("42703", DbFault::Fatal, "undefined column"),
            ("XX000", DbFault::Fatal, "internal error"),
            ("0A000", DbFault::Fatal, "feature not supported"),
        ];
        for (code, want, what) in cases {
            assert_eq!(classify_sqlstate(code), want, "{code} ({what})");
        }
    }

    #[test]
    fn other_errors() {
        assert_eq!(SinkError::Database(sqlx::Error::PoolTimedOut).db_fault(), Some(DbFault::Transient));
        assert!(SinkError::Database(sqlx::Error::PoolTimedOut).retryable());
        assert_eq!(SinkError::Config("x".into()).db_fault(), None);
    }
}
