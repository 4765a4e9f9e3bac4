//! Helpers for the end-to-end tests: where the binaries and services are, and throw-away topics
//! and databases so tests never see each other's data.
//!
//! The services are the real ones that `scripts/services.sh start` runs; `scripts/test.sh` starts
//! them and builds the release binaries before `cargo test`. Override with KAFKA_BROKERS,
//! DATABASE_ADMIN_URL (a URL to the `postgres` database) and PIPELINE_BIN_DIR.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn sample(name: &str) -> PathBuf {
    let p = repo_root().join("samples").join(name);
    assert!(p.is_file(), "{} missing: run samples/fetch.sh", p.display());
    p
}

pub fn model() -> PathBuf {
    repo_root().join("models/yolo11n-pose.onnx")
}

/// A built binary of the workspace (`cargo build --release` first).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PIPELINE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release"));
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: run `cargo build --release` first", p.display());
    p
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn admin_db_url() -> String {
    std::env::var("DATABASE_ADMIN_URL").unwrap_or_else(|_| "postgres://pipeline:pipeline@127.0.0.1:5432/postgres".into())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&topic], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// A database of its own, dropped with the value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create(prefix: &str) -> Result<Self> {
        let name = unique(prefix).to_lowercase();
        let mut admin = PgConnection::connect(&admin_db_url()).await.context("connect to PostgreSQL (is it running?)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await?;
        let base = admin_db_url();
        let url = format!("{}/{name}", base.rsplit_once('/').expect("URL with a database").0);
        Ok(TestDb { name, url })
    }

    pub async fn connect(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, synchronously: psql is on every machine the scripts provision.
        let _ = Command::new("psql")
            .args([&admin_db_url(), "-qc", &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every message in the topic, read from the start of each partition to its end.
pub fn read_topic(topic: &str, timeout: Duration) -> Result<Vec<(i32, i64, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        remaining += high - low;
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while remaining > 0 {
        if Instant::now() > deadline {
            bail!("read {} messages of {topic}; {remaining} still missing", out.len());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            out.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()));
            remaining -= 1;
        }
    }
    Ok(out)
}

/// Frames in a video as FFmpeg counts them by decoding: an independent count for the detector's.
pub fn ffprobe_frame_count(path: &Path) -> Result<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Runs a binary to completion with a time limit.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wait_output(child, timeout)
}

pub fn wait_output(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!("timed out after {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// Asks a process to stop as an operator would.
pub fn sigterm(child: &Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}
