//! Command-line and environment configuration of the sink.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::registry::Registry;

use crate::error::SinkError;

use crate::write::WriteMode;

/// Consumes detection messages (wire schema v2, and v1) from Kafka in a consumer group and writes them to
/// PostgreSQL in batches, one transaction per batch, committing offsets only once rows are durable.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and write until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Create or upgrade the database schema, then exit.
    Migrate(DbArgs),
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://pipeline:pipeline@127.0.0.1:5432/detections")]
    pub database_url: String,
}

impl DbArgs {
    /// The URL with its password hidden, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.database_url)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Topic to consume.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "detections")]
    pub topic: String,

    /// Consumer group; run more sinks with the same group to share the partitions.
    #[arg(long, env = "SINK_GROUP_ID", default_value = "detections-sink")]
    pub group_id: String,

    /// Topic for messages that fail validation (default: `<topic>.dlq`).
    #[arg(long, env = "SINK_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Write a batch once it holds this many rows (frames + detections).
    #[arg(long, env = "SINK_BATCH_ROWS", default_value_t = 5000)]
    pub batch_rows: usize,

    /// While the previous batch is still being written, the next one keeps gathering up to this
    /// many rows: under load, batches grow and each transaction's fixed cost is shared by more rows.
    #[arg(long, env = "SINK_BATCH_MAX_ROWS", default_value_t = 20000)]
    pub batch_max_rows: usize,

    /// Write a batch at the latest this long after its first message, in milliseconds.
    #[arg(long, env = "SINK_BATCH_MS", default_value_t = 200)]
    pub batch_ms: u64,

    /// Connections a batch is written over in parallel, each transaction holding whole partitions
    /// (and their offsets); a batch from one partition is written by one.
    #[arg(long, env = "SINK_WRITERS", default_value_t = 2)]
    pub writers: usize,

    /// How batches are written; the alternatives are there to be measured (see the benchmark).
    #[arg(long, env = "SINK_WRITE_MODE", value_enum, default_value_t = WriteMode::Copy)]
    pub write_mode: WriteMode,

    /// Seconds between progress lines in the log.
    #[arg(long, env = "SINK_REPORT_EVERY", default_value_t = 10)]
    pub report_every_s: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9187); off when unset.
    #[arg(long, env = "SINK_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Schema registry (Confluent-compatible API; for Apicurio, its `/apis/ccompat/v7`): framed
    /// messages are checked against the schema their id names. Without it, framed messages are
    /// checked against the wire contract built in. Credentials may be given as URL user info.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", value_name = "URL")]
    pub schema_registry: Option<String>,

    /// Extra librdkafka property for the consumer and dead-letter producer (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = common::kafka::parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

impl RunArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The schema registry client, if one is set.
    pub fn registry(&self) -> Result<Option<Registry>, SinkError> {
        self.schema_registry.as_deref().map(|url| Registry::new(url, Duration::from_secs(5)).map_err(SinkError::Config)).transpose()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.batch_rows == 0 {
            return Err("--batch-rows must be at least 1".into());
        }
        if self.batch_max_rows < self.batch_rows {
            return Err(format!("--batch-max-rows ({}) must be at least --batch-rows ({})", self.batch_max_rows, self.batch_rows));
        }
        if !(1..=64).contains(&self.writers) {
            return Err(format!("--writers must be within 1 and 64, got {}", self.writers));
        }
        if self.batch_ms == 0 {
            return Err("--batch-ms must be at least 1".into());
        }
        if self.dead_letter_topic() == self.topic {
            return Err("--dead-letter-topic must differ from --topic".into());
        }
        Ok(())
    }
}

fn redact_url(url: &str) -> String {
    // scheme://user:password@host/...  ->  scheme://user:***@host/...
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn run_args_validate() {
        let cli = Cli::parse_from(["sink", "run", "--topic", "t"]);
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert_eq!(args.dead_letter_topic(), "t.dlq");
        assert!(args.validate().is_ok());
        let cli = Cli::parse_from(["sink", "run", "--topic", "t", "--dead-letter-topic", "t"]);
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert!(args.validate().is_err());
        let cli = Cli::parse_from(["sink", "run", "--topic", "t", "--batch-rows", "30000"]);
        let Command::Run(args) = cli.command else { panic!("expected run") };
        assert!(args.validate().unwrap_err().contains("--batch-max-rows"));
    }
}
