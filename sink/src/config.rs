//! Command-line and environment configuration of the sink. A leaf: it imports no other module of
//! the sink.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::kafka::{check_topic, KafkaArgs};
use common::secret::SecretUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    /// COPY into the tables; on a key conflict, redo the part through staging (default).
    Copy,
    /// Always COPY into staging tables, then merge.
    Staging,
    /// Multi-row INSERT ... SELECT FROM UNNEST(arrays); on a key conflict, redo through staging.
    Unnest,
}

/// Consumes detection messages (wire schema v3, and v2 and v1) from Kafka in a consumer group and writes them to
/// PostgreSQL in batches, one transaction per batch, committing offsets only once rows are durable.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = "Logs go to standard error, at the level RUST_LOG sets (default: info). Exit codes: 0 done, 2 a setting to fix, 3 an outage, 130 a second signal. See docs/sink.md.")]
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
    /// Show the store's policy (daily partitions made ahead, days kept), or set it; every sink
    /// follows it from its next hourly pass.
    Policy(PolicyArgs),
    /// One pass of the store's upkeep now (what `sink run` does hourly), then exit: for a
    /// scheduler, when sinks run with `--maintain false`.
    Maintain(DbArgs),
    /// Count a camera's stored tracks again with rules (zones and lines, maybe edited since) and
    /// store their events under those rules' version, beside the events stored before; then
    /// exit. Each tracker session with frames in the time range is recounted whole.
    Recount(RecountArgs),
}

#[derive(Debug, Args)]
pub struct RecountArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The camera whose tracks to recount.
    #[arg(long)]
    pub camera: String,

    /// The rules: a TOML file with the keys of a camera's [camera.rules] in the detector's cameras
    /// file (zones, lines, ankle_score, track_end). See docs/analytics.md.
    #[arg(long, value_name = "FILE")]
    pub rules: std::path::PathBuf,

    /// Sessions with frames captured at or after this time (RFC 3339) [default: the first].
    #[arg(long, value_name = "TIME")]
    pub from: Option<chrono::DateTime<chrono::Utc>>,

    /// ... and before this time (RFC 3339) [default: now].
    #[arg(long, value_name = "TIME")]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

impl RecountArgs {
    pub fn validate(&self) -> Result<(), String> {
        match (self.from, self.to) {
            (Some(from), Some(to)) if from >= to => Err(format!("--from {from} is not before --to {to}")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Make the daily partitions this many days ahead of today (UTC), 1 to 366.
    #[arg(long, value_name = "DAYS")]
    pub days_ahead: Option<u32>,

    /// Keep this many whole days of rows before today (UTC), 0 to 36600; 0 keeps everything.
    /// Older days are dropped at the next pass.
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u32>,
}

impl PolicyArgs {
    /// The ranges the store's policy table holds (its CHECKs), refused before connecting.
    pub fn validate(&self) -> Result<(), String> {
        within("--days-ahead", self.days_ahead.map_or(1, u64::from), 1, 366, "")?;
        within("--retention-days", self.retention_days.map_or(0, u64::from), 0, 36_600, "")
    }
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

impl DbArgs {
    /// A URL of PostgreSQL's, before anything connects: another database's URL would only fail
    /// as a connection that never comes.
    pub fn validate(&self) -> Result<(), String> {
        match self.database_url.expose().split_once("://") {
            Some(("postgres" | "postgresql", _)) => Ok(()),
            Some((scheme, _)) => Err(format!(
                "--database-url {} is not PostgreSQL's: it must start with postgres:// or postgresql://, not {scheme}://",
                self.database_url
            )),
            None => Err("--database-url is not a URL: postgres://USER:PASSWORD@HOST:PORT/DATABASE expected".into()),
        }
    }
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

    /// This sink's static member id in the group (`group.instance.id`), unique within the group
    /// [default: the host name]. Restarted within the session timeout under the same id, a sink
    /// gets its partitions back at once, without a rebalance; stopped for longer, its partitions
    /// go to the others after the session timeout (`-X session.timeout.ms`, 45 s by default).
    #[arg(long, env = "SINK_INSTANCE_ID", default_value_t = host_name(), hide_default_value = true)]
    pub instance_id: String,

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

    /// Run the store's upkeep in this sink, at start and every hour: daily partitions made ahead,
    /// days past the retention dropped (`sink policy` sets both). One sink at a time does it; with
    /// false, run `sink maintain` from a scheduler instead (with a role allowed DDL).
    #[arg(long, env = "SINK_MAINTAIN", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub maintain: bool,

    /// Frames captured more than this many days before the database's clock go to the
    /// dead-letter topic, as do frames older than the retention keeps: a camera clock that is wrong
    /// must not fill the default partition or be deleted unseen.
    #[arg(long, env = "SINK_ADMIT_PAST_DAYS", default_value_t = 7, value_name = "DAYS")]
    pub admit_past_days: u32,

    /// Frames captured more than this many minutes after the database's clock go to the
    /// dead-letter topic.
    #[arg(long, env = "SINK_ADMIT_FUTURE_MINUTES", default_value_t = 60, value_name = "MINUTES")]
    pub admit_future_minutes: u32,

    /// Seconds between progress lines in the log.
    #[arg(long, env = "SINK_REPORT_EVERY", default_value_t = 10)]
    pub report_every_s: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics, liveness at /livez, readiness at /readyz
    /// (e.g. 0.0.0.0:9189, localhost:9189; port 0: one the system picks, logged); off when unset.
    #[arg(long, env = "SINK_METRICS_ADDR", value_name = "HOST:PORT", value_parser = common::telemetry::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Schema registry (Confluent-compatible API; for Apicurio, its `/apis/ccompat/v7`): framed
    /// messages are checked against the schema their id names. Without it, framed messages are
    /// checked against the wire contract built in. Credentials may be given as URL user info.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", value_name = "URL", hide_env_values = true)]
    pub schema_registry: Option<SecretUrl>,

    /// How long a message whose schema id the registry does not know waits (its partition paused,
    /// the registry asked again) before it goes to the dead-letter topic, in seconds: a schema
    /// registered a moment ago may not have reached the registry's follower yet.
    #[arg(long, env = "SINK_UNKNOWN_SCHEMA_WAIT_S", default_value_t = 30, value_name = "SECONDS")]
    pub unknown_schema_wait_s: u64,
}

/// The host's name (a container's is its id): a static member id that differs between hosts and
/// stays the same across a restart on one.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sink".to_string())
}

impl RunArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.kafka.topic))
    }

    pub fn unknown_schema_wait(&self) -> Duration {
        Duration::from_secs(self.unknown_schema_wait_s)
    }

    /// Refuses settings that cannot work, with one line naming the flag, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        self.db.validate()?;
        self.kafka.check()?;
        if self.group_id.trim().is_empty() {
            return Err("--group-id is empty: sinks that share a group id share the partitions".into());
        }
        check_topic("--dead-letter-topic", &self.dead_letter_topic())?;
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
        within("--admit-past-days", self.admit_past_days.into(), 1, 36_600, "")?;
        within(
            "--admit-future-minutes",
            self.admit_future_minutes.into(),
            0,
            1_440,
            " (the daily partitions are made at least one day ahead)",
        )?;
        within("--unknown-schema-wait-s", self.unknown_schema_wait_s, 0, 86_400, "")?;
        if self.instance_id.trim().is_empty() || self.instance_id.len() > 249 {
            return Err(format!("--instance-id must be 1 to 249 characters, got {:?}", self.instance_id));
        }
        if self.dead_letter_topic() == self.kafka.topic {
            return Err("--dead-letter-topic must differ from --topic".into());
        }
        Ok(())
    }
}

/// `Err` naming `flag` and its range when `v` is outside `lo..=hi`.
fn within(flag: &str, v: u64, lo: u64, hi: u64, why: &str) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{flag} must be within {lo} and {hi}{why}, got {v}"))
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
