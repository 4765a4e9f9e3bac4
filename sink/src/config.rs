//! Command-line and environment configuration of the sink.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::kafka::KafkaArgs;
use common::registry::Registry;
use common::secret::SecretUrl;

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
    /// PostgreSQL connection URL [default: postgres://pipeline:***@127.0.0.1:5432/detections, the
    /// local development database]. Its password is never shown.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "postgres://pipeline:pipeline@127.0.0.1:5432/detections"
    )]
    pub database_url: SecretUrl,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Consumer group; run more sinks with the same group to share the partitions.
    #[arg(long, env = "SINK_GROUP_ID", default_value = "detections-sink")]
    pub group_id: String,

    /// Topic for messages that fail validation (default: `<topic>.dlq`).
    #[arg(long, env = "SINK_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Write as soon as the writer is idle (true), so a frame at live rates is stored within
    /// milliseconds and under load batches grow while the previous one is written; or (false) wait
    /// for a batch of --batch-rows or --batch-ms.
    #[arg(long, env = "SINK_WRITE_WHEN_IDLE", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub write_when_idle: bool,

    /// Write a batch once it holds this many rows (frames + detections).
    #[arg(long, env = "SINK_BATCH_ROWS", default_value_t = 5000)]
    pub batch_rows: usize,

    /// While the previous batch is still being written, the next one keeps gathering up to this
    /// many rows: under load, batches grow and each transaction's fixed cost is shared by more rows.
    #[arg(long, env = "SINK_BATCH_MAX_ROWS", default_value_t = 20000)]
    pub batch_max_rows: usize,

    /// Write a batch at the latest this long after its first message, in milliseconds (with
    /// --write-when-idle, only a bound: an idle writer takes a batch at once).
    #[arg(long, env = "SINK_BATCH_MS", default_value_t = 200)]
    pub batch_ms: u64,

    /// Connections a batch is written over in parallel, each transaction holding whole partitions
    /// (and their offsets); a batch from one partition is written by one.
    #[arg(long, env = "SINK_WRITERS", default_value_t = 2)]
    pub writers: usize,

    /// How batches are written; the alternatives are there to be measured (see the benchmark).
    #[arg(long, env = "SINK_WRITE_MODE", value_enum, default_value_t = WriteMode::Copy)]
    pub write_mode: WriteMode,

    /// A statement that runs longer than this is cancelled and retried (0: no limit), in
    /// milliseconds: a database that hangs is an error that retries, not a stuck sink.
    #[arg(long, env = "SINK_STATEMENT_TIMEOUT_MS", default_value_t = 60_000)]
    pub statement_timeout_ms: u64,

    /// Waiting longer than this for a lock (a `LOCK TABLE` someone holds) fails the write, which is
    /// retried (0: wait forever), in milliseconds.
    #[arg(long, env = "SINK_LOCK_TIMEOUT_MS", default_value_t = 10_000)]
    pub lock_timeout_ms: u64,

    /// On a rebalance, how long a revoked partition waits for this sink's write in flight before
    /// it is given up, so that its next owner starts from a final offset (seconds).
    #[arg(long, env = "SINK_REVOKE_WAIT", default_value_t = 10)]
    pub revoke_wait_s: u64,

    /// Daily partitions of `frames` and `detections` made this many days ahead of today (UTC),
    /// at start and every hour; rows beyond them land in the default partition.
    #[arg(long, env = "SINK_PARTITION_DAYS_AHEAD", default_value_t = 7)]
    pub partition_days_ahead: u32,

    /// Keep this many whole days of rows before today (UTC); older partitions are dropped (0: keep
    /// everything).
    #[arg(long, env = "SINK_RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u32,

    /// Seconds between progress lines in the log.
    #[arg(long, env = "SINK_REPORT_EVERY", default_value_t = 10)]
    pub report_every_s: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9187); off when unset.
    #[arg(long, env = "SINK_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Schema registry (Confluent-compatible API; for Apicurio, its `/apis/ccompat/v7`): framed
    /// messages are checked against the schema their id names. Without it, framed messages are
    /// checked against the wire contract built in. Credentials may be given as URL user info.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", value_name = "URL", hide_env_values = true)]
    pub schema_registry: Option<SecretUrl>,
}

impl RunArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.kafka.topic))
    }

    /// The schema registry client, if one is set.
    pub fn registry(&self) -> Result<Option<Registry>, SinkError> {
        self.schema_registry.as_ref().map(|url| Registry::new(url.expose(), Duration::from_secs(5)).map_err(SinkError::Config)).transpose()
    }

    /// Refuses settings that cannot work, with one line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let within = |flag: &str, v: u64, lo: u64, hi: u64, why: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{flag} must be within {lo} and {hi}{why}, got {v}"))
            }
        };
        within("--batch-rows", self.batch_rows as u64, 1, MAX_BATCH_ROWS, "")?;
        within("--batch-max-rows", self.batch_max_rows as u64, 1, MAX_BATCH_ROWS, " (the batch is held in memory)")?;
        if self.batch_max_rows < self.batch_rows {
            return Err(format!("--batch-max-rows ({}) must be at least --batch-rows ({})", self.batch_max_rows, self.batch_rows));
        }
        within("--writers", self.writers as u64, 1, 64, "")?;
        within("--batch-ms", self.batch_ms, 1, 60_000, " (rows wait that long at most before they are written)")?;
        within("--report-every-s", self.report_every_s, 1, 86_400, "")?;
        within("--revoke-wait-s", self.revoke_wait_s, 0, 600, "")?;
        within("--statement-timeout-ms", self.statement_timeout_ms, 0, 86_400_000, "")?;
        within("--lock-timeout-ms", self.lock_timeout_ms, 0, 86_400_000, "")?;
        within("--partition-days-ahead", self.partition_days_ahead.into(), 1, 366, "")?;
        within("--retention-days", self.retention_days.into(), 0, 36_600, "")?;
        if self.dead_letter_topic() == self.kafka.topic {
            return Err("--dead-letter-topic must differ from --topic".into());
        }
        Ok(())
    }
}

/// The most rows a batch may hold, with its detections.
const MAX_BATCH_ROWS: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn no_secret_in_debug_or_help() {
        let cli = Cli::parse_from([
            "sink",
            "run",
            "--database-url",
            "postgres://u:hunter2@h/db?password=hunter3",
            "--schema-registry",
            "https://svc:hunter4@reg/x",
            "-X",
            "sasl.password=hunter5",
        ]);
        let shown = format!("{cli:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let help = Cli::command().find_subcommand_mut("run").unwrap().render_long_help().to_string();
        assert!(!help.contains("pipeline:pipeline"), "{help}");
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
        for (flags, needle) in [
            (&["--batch-rows", "30000"][..], "--batch-max-rows (20000) must be at least --batch-rows"),
            (&["--report-every-s", "0"], "--report-every-s must be within 1 and 86400"),
            (&["--batch-ms", "86400000"], "--batch-ms must be within 1 and 60000"),
            (&["--batch-ms", "0"], "--batch-ms must be within 1"),
            (&["--writers", "0"], "--writers must be within 1 and 64"),
            (&["--batch-max-rows", "50000000"], "--batch-max-rows must be within 1 and 1000000"),
            (&["--revoke-wait-s", "9999"], "--revoke-wait-s must be within 0 and 600"),
        ] {
            let cli = Cli::parse_from(["sink", "run", "--topic", "t"].into_iter().chain(flags.iter().copied()));
            let Command::Run(args) = cli.command else { panic!("expected run") };
            let err = args.validate().unwrap_err();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }
}
