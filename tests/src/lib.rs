//! Helpers for the end-to-end tests: where the binaries and services are, throw-away topics and
//! databases so tests never see each other's data, and for the live-source tests an RTSP server,
//! test media made with ffmpeg, and child processes that are read while they run.
//!
//! The services are the real ones that `scripts/services.sh start` runs; `scripts/test.sh` starts
//! them and builds the release binaries before `cargo test`. Override with KAFKA_BROKERS,
//! DATABASE_ADMIN_URL (a URL to the `postgres` database) and PIPELINE_BIN_DIR.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
pub use rdkafka::admin::TopicReplication;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
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
    let dir = std::env::var_os("PIPELINE_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/release"));
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: run `cargo build --release` first", p.display());
    p
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The schema registry's Confluent-compatible API that `scripts/test.sh` starts.
pub fn registry_url() -> String {
    std::env::var("TEST_SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

pub fn registry() -> common::registry::Registry {
    common::registry::Registry::new(&registry_url(), Duration::from_secs(10)).expect("a registry URL")
}

/// `scripts/services.sh ARGS` (start, stop, restart a shared server); `keep_kafka_data` keeps the
/// broker's log dir through a start, as a broker that went away and came back.
pub fn services(args: &[&str], keep_kafka_data: bool) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/services.sh")).args(args);
    if keep_kafka_data {
        cmd.env("KEEP_KAFKA_DATA", "1");
    }
    ensure!(cmd.status()?.success(), "scripts/services.sh {args:?} failed");
    Ok(())
}

/// Where `scripts/services.sh` keeps the services' state (its STATE_DIR, from the same variable).
pub fn state_dir() -> PathBuf {
    std::env::var_os("YOLO_PIPELINE_STATE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/yolo-pipeline"))
}

pub fn admin_db_url() -> String {
    std::env::var("DATABASE_ADMIN_URL").unwrap_or_else(|_| "postgres://pipeline:pipeline@127.0.0.1:5432/postgres".into())
}

/// A benchmark's `FLAG a,b,c` argument as a list (`default` when the flag is not given).
pub fn flag_list<T: std::str::FromStr>(args: &[String], flag: &str, default: &str) -> Result<Vec<T>> {
    let v = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default, |s| s.as_str());
    v.split(',').map(|x| x.parse::<T>().ok().with_context(|| format!("{flag} {v}"))).collect()
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    create_topic_with(name, partitions, &[]).await
}

/// A topic with these topic configs (`max.message.bytes`, ...).
pub async fn create_topic_with(name: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
    create_topic_at(&brokers(), name, partitions, 1, configs).await
}

/// A topic on the brokers at `bootstrap`, with `replicas` copies of each partition.
pub async fn create_topic_at(bootstrap: &str, name: &str, partitions: i32, replicas: i32, configs: &[(&str, &str)]) -> Result<()> {
    create_topic_on(bootstrap, name, partitions, TopicReplication::Fixed(replicas), configs).await
}

/// A topic whose partitions' copies are where `replication` says (`Variable`: on these brokers).
pub async fn create_topic_on(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: TopicReplication<'_>,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut topic = NewTopic::new(name, partitions, replication);
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
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
        Self::create_with(prefix, "").await
    }

    /// With `CREATE DATABASE` options (an encoding, say).
    pub async fn create_with(prefix: &str, options: &str) -> Result<Self> {
        let name = unique(prefix).to_lowercase();
        let mut admin = PgConnection::connect(&admin_db_url()).await.context("connect to PostgreSQL (is it running?)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\" {options}"))).execute(&mut admin).await?;
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

/// A message read back from a topic.
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp: the producer's, or the broker's append time on a topic with
    /// `message.timestamp.type=LogAppendTime`.
    pub timestamp_ms: Option<i64>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every message in the topic, read from the start of each partition to its end.
pub fn read_topic(topic: &str, timeout: Duration) -> Result<Vec<Record>> {
    read_topic_at(&brokers(), topic, timeout)
}

/// As [`read_topic`], from the brokers at `bootstrap`.
pub fn read_topic_at(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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
            let headers = m
                .headers()
                .map(|h| h.iter().map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())).collect())
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
            remaining -= 1;
        }
    }
    Ok(out)
}

/// The run of [`synthetic_frame`]'s messages.
pub const SYNTHETIC_RUN: uuid::Uuid = uuid::Uuid::from_u128(0x0193_5a00_0000_7000_8000_0000_0000_0001);

/// When frame 0 of [`synthetic_frame`] was captured: half an hour before this process started, to
/// the minute, so that frames are fresh for the sink's admission window (a week back, an hour
/// ahead) and the same frame is the same message throughout a test.
pub fn synthetic_base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let ms = chrono::Utc::now().timestamp_millis() - 30 * 60_000;
        ms - ms.rem_euclid(60_000)
    })
}

/// A realistic frame message of [`SYNTHETIC_RUN`]: `persons` people with boxes and 17 keypoints each.
pub fn synthetic_frame(camera: &str, seq: u64, persons: usize) -> wire::FrameMessage {
    let detections = (0..persons)
        .map(|i| {
            let x = 10.0 + 90.0 * i as f32 + (seq % 7) as f32;
            wire::Detection {
                class: "person".into(),
                score: 0.5 + 0.05 * i as f32,
                bbox: wire::BBox { x1: x, y1: 50.5, x2: x + 60.25, y2: 230.0 },
                keypoints: Some((0..17).map(|k| [x + k as f32, 60.0 + 10.0 * k as f32, 0.9]).collect()),
            }
        })
        .collect();
    wire::FrameMessage {
        schema_version: wire::SCHEMA_VERSION,
        camera_id: camera.to_string(),
        run_id: SYNTHETIC_RUN,
        frame_seq: seq,
        captured_at: chrono::DateTime::from_timestamp_millis(synthetic_base_ms() + seq as i64 * 100).unwrap(),
        pts_ms: seq as i64 * 100,
        frame_width: 768,
        frame_height: 576,
        model: wire::ModelInfo { name: "synthetic".into(), sha256: "0123456789ab".into(), keypoints: 17 },
        detections,
        tracker: None,
        epoch: None,
    }
}

/// The frame as `detector --track` sends it: in tracker `session`, its detection `i` matched to
/// track `first_id + i` (a Kalman box a little off the detection's), and one more track after
/// those, kept alive by a weak detection that is none of the frame's (no `detection`).
pub fn tracked_frame(mut m: wire::FrameMessage, session: uuid::Uuid, first_id: u64) -> wire::FrameMessage {
    let mut tracks: Vec<wire::Track> = m
        .detections
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let b = d.bbox;
            let bbox = wire::BBox { x1: b.x1 - 0.25, y1: b.y1 + 0.5, x2: b.x2 + 0.75, y2: b.y2 - 0.125 };
            wire::Track { id: first_id + i as u64, bbox, score: d.score, detection: Some(i) }
        })
        .collect();
    let weak = wire::BBox { x1: 700.0, y1: 300.0 + (m.frame_seq % 5) as f32, x2: 740.5, y2: 420.0 };
    tracks.push(wire::Track { id: first_id + m.detections.len() as u64, bbox: weak, score: 0.125, detection: None });
    m.tracker = Some(wire::Tracker { session, tracks, rules: None });
    m
}

/// The message as an older detector wrote it: wire v1, without run id or keypoint count.
pub fn v1_json(msg: &wire::FrameMessage) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&msg.to_json()).expect("JSON");
    v["schema_version"] = 1.into();
    v.as_object_mut().expect("an object").remove("run_id");
    v["model"].as_object_mut().expect("an object").remove("keypoints");
    v.to_string().into_bytes()
}

/// Hands one record to the producer, waiting while its queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, Vec<u8>>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Produces keyed payloads and waits until the broker has them all.
pub fn produce<'a>(topic: &str, messages: impl IntoIterator<Item = (&'a str, Vec<u8>)>) -> Result<usize> {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("enable.idempotence", "true").set("linger.ms", "20").create()?;
    let mut n = 0;
    for (key, payload) in messages {
        send(&producer, BaseRecord::to(topic).key(key).payload(&payload))?;
        n += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(n)
}

/// Produces payloads into one partition, in order, and waits until the brokers at `bootstrap` have
/// them all.
pub fn produce_to(bootstrap: &str, topic: &str, partition: i32, payloads: &[Vec<u8>]) -> Result<()> {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("enable.idempotence", "true").create()?;
    for payload in payloads {
        send(&producer, BaseRecord::to(topic).partition(partition).payload(payload))?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// A camera feed in a thread: `total` synthetic frames (3 people each) from `cameras` cameras
/// (`cam-0`, ...), sent in chunks of `chunk` with `pause` between them; the thread's result is the
/// frames sent.
pub fn spawn_producer(topic: &str, cameras: u64, total: u64, chunk: u64, pause: Duration) -> std::thread::JoinHandle<Result<u64>> {
    let topic = topic.to_string();
    std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let n = chunk.min(total - sent);
            let frames: Vec<wire::FrameMessage> =
                (sent..sent + n).map(|i| synthetic_frame(&format!("cam-{}", i % cameras), i / cameras, 3)).collect();
            produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
            sent += n;
            std::thread::sleep(pause);
        }
        Ok(sent)
    })
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

/// Sends the signal `name` (TERM, STOP, CONT, ...) to a process.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
}

/// A running child process whose stdout lines and stderr are read by threads, so neither pipe can
/// fill up and block it. Killed when dropped: a failing test leaves nothing running.
pub struct Spawned {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

/// A live camera's detector started, left to publish `frames` more messages to `topic`, and
/// stopped by SIGTERM (which must end it cleanly), `rounds` times: a restarted detector. The
/// topic's size after the last round.
pub fn restarted_detector(topic: &str, rounds: u32, frames: i64, detector: impl Fn() -> Command) -> Result<i64> {
    let mut published = topic_size(topic)?;
    for round in 0..rounds {
        let det = Spawned::start(&mut detector())?;
        let deadline = Instant::now() + Duration::from_secs(180);
        while topic_size(topic)? < published + frames {
            ensure!(Instant::now() < deadline, "round {round}: no frames; stderr:\n{}", det.stderr());
            std::thread::sleep(Duration::from_millis(200));
        }
        det.signal("TERM");
        let (status, _, stderr) = det.finish(Duration::from_secs(60))?;
        ensure!(status.success(), "round {round}: {status}:\n{stderr}");
        published = topic_size(topic)?;
    }
    Ok(published)
}

impl Spawned {
    pub fn start(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut err) = (Arc::clone(&stderr), BufReader::new(child.stderr.take().expect("piped stderr")));
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(err.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Ok(Spawned { child, lines, stderr })
    }

    /// The next line of stdout; `None` once stdout is closed; an error after `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => bail!("no stdout line within {timeout:?}; stderr:\n{}", self.stderr()),
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr so far satisfies `ready`; an error naming `what` after `timeout`.
    pub fn wait_stderr(&self, what: &str, timeout: Duration, ready: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !ready(&self.stderr()) {
            if Instant::now() > deadline {
                bail!("waited {timeout:?} for {what}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Waits for the exit (killing the process after `timeout`), then returns its status, the
    /// stdout lines not read yet, and all of stderr.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("still running {timeout:?} after being asked to stop; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        while let Some(line) = self.next_line(Duration::from_secs(10))? {
            rest.push(line);
        }
        // The reader thread may still be appending the last of stderr.
        std::thread::sleep(Duration::from_millis(100));
        Ok((status, rest, self.stderr()))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A folder of its own under the system temp folder, removed with the value.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// Under `base` (one other users can reach, say).
    pub fn new_in(base: &Path, prefix: &str) -> Result<Self> {
        let dir = base.join(unique(prefix));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Re-encodes `src` (its first `seconds`, if given) as H.264 in an .mp4, a key frame every 10 frames.
pub fn h264_mp4(src: &Path, dst: &Path, seconds: Option<u32>) -> Result<()> {
    h264_clip(src, dst, 0, seconds)
}

/// As [`h264_mp4`], from `start` seconds into `src`.
pub fn h264_clip(src: &Path, dst: &Path, start: u32, seconds: Option<u32>) -> Result<()> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-ss", &start.to_string(), "-i"]).arg(src);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p", "-an"]).arg(dst);
    let out = run(&mut cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!("ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `scripts/rtsp_server.py` serving `file` at rtsp://127.0.0.1:`port`/stream, once it listens.
pub fn start_rtsp_server(file: &Path, port: u16) -> Result<Spawned> {
    // Debian's Python: the one the python3-gi packages belong to.
    let server =
        Spawned::start(Command::new("/usr/bin/python3").arg(repo_root().join("scripts/rtsp_server.py")).arg(file).arg(port.to_string()))?;
    match server.next_line(Duration::from_secs(30))? {
        Some(line) if line.starts_with("ready ") => Ok(server),
        other => bail!("RTSP server did not start ({other:?}); stderr:\n{}", server.stderr()),
    }
}

/// The number in `key=N` on the last stderr line that contains `marker` (tracing's field format).
pub fn log_field(stderr: &str, marker: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.contains(marker))?;
    let prefix = format!("{key}=");
    line.split_whitespace().find_map(|w| w.strip_prefix(&prefix)).and_then(|v| v.trim_matches('"').parse().ok())
}

/// The body of a plain HTTP/1.1 GET that must answer 200 (enough for a metrics endpoint; no
/// client library needed).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let (status, body) = http_status(addr, path)?;
    ensure!(status == 200, "GET {path}: HTTP {status}: {body}");
    Ok(body)
}

/// A plain HTTP/1.1 GET: the status code and the body, whatever the status.
pub fn http_status(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP response: {response}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("GET {path}: {head}"))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok((status, dechunk(body)?));
    }
    Ok((status, body.to_string()))
}

/// The body of a `Transfer-Encoding: chunked` response (Prometheus' API sends its answers so).
fn dechunk(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(|| anyhow::anyhow!("a chunk without its size line"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(body);
        }
        ensure!(after.len() >= size + 2, "a chunk cut short");
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The detector on `source` as camera `camera`, publishing to `topic`, run to its end.
pub fn detect_to_kafka(source: &Path, camera: &str, topic: &str, extra: &[&str]) -> Result<Output> {
    let out = run(
        Command::new(bin("detector"))
            .arg("--source")
            .arg(source)
            .arg("--model")
            .arg(model())
            .args(["--camera-id", camera, "--topic", topic, "--brokers", &brokers()])
            .args(extra),
        Duration::from_secs(900),
    )?;
    ensure!(out.status.success(), "detector failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// The value of an unlabelled Prometheus series, e.g. `sink_frames_written_total`.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The metrics at `addr` once `name` reads `want`, or as they are after `timeout`: a sink's
/// counters move just after the commit that the offsets in the database already show, and its
/// endpoint opens a moment after it starts.
pub async fn metrics_once(addr: &str, name: &str, want: f64, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        // Refused while the service starts and has not opened the endpoint yet.
        match http_get(addr, "/metrics") {
            Ok(body) if metric(&body, name) == Some(want) || Instant::now() > deadline => return Ok(body),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A fresh topic with `partitions` partitions and a fresh, migrated database, named from `prefix`.
pub async fn fresh_topic_and_db(prefix: &str, partitions: i32) -> Result<(String, TestDb)> {
    let topic = unique(prefix);
    create_topic(&topic, partitions).await?;
    let db = TestDb::create(prefix).await?;
    migrate(&db.url)?;
    Ok((topic, db))
}

/// `sink migrate` against a database.
pub fn migrate(db_url: &str) -> Result<()> {
    let out = run(Command::new(bin("sink")).arg("migrate").env("DATABASE_URL", db_url), Duration::from_secs(60))?;
    ensure!(out.status.success(), "sink migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A running `sink run`; its log is read as it goes (see [`Spawned`]).
pub struct SinkProcess(Spawned);

impl SinkProcess {
    pub fn start(db_url: &str, topic: &str, group: &str, extra: &[&str]) -> Result<Self> {
        Self::start_on(&brokers(), db_url, topic, group, extra)
    }

    /// A sink on the brokers at `bootstrap`, a static member of its own (a new instance id: on
    /// one host they would all default to its name).
    pub fn start_on(bootstrap: &str, db_url: &str, topic: &str, group: &str, extra: &[&str]) -> Result<Self> {
        Self::start_as(bootstrap, db_url, topic, group, &unique("sink"), extra)
    }

    /// A sink that is the group's static member `instance` (as a sink restarted on its host is),
    /// given in the environment (SINK_INSTANCE_ID).
    pub fn start_as(bootstrap: &str, db_url: &str, topic: &str, group: &str, instance: &str, extra: &[&str]) -> Result<Self> {
        let spawned = Spawned::start(
            Command::new(bin("sink"))
                .args(["run", "--topic", topic, "--group-id", group, "--brokers", bootstrap, "--report-every-s", "2"])
                .args(extra)
                .env("SINK_INSTANCE_ID", instance)
                .env("DATABASE_URL", db_url),
        )?;
        Ok(SinkProcess(spawned))
    }

    pub fn log(&self) -> String {
        self.0.stderr()
    }

    /// CPU seconds (user + system) the process has used so far, from /proc.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.child.id())).ok()?;
        // Fields after the ")" that ends the command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0) // USER_HZ is 100 on Linux
    }

    /// Resident memory now, in MiB, from /proc.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.child.id())).ok()?;
        let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024.0)
    }

    /// Waits for the process to end by itself; its status and log.
    pub fn wait_exit(self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let (status, _, log) = self.0.finish(timeout)?;
        Ok((status, log))
    }

    /// SIGTERM, then waits for a clean exit; returns the log.
    pub fn stop(self) -> Result<String> {
        self.0.signal("TERM");
        let (status, _, log) = self.0.finish(Duration::from_secs(60))?;
        anyhow::ensure!(status.success(), "sink exited with {status:?}:\n{log}");
        Ok(log)
    }

    /// SIGKILL: a crash, with no chance to finish anything.
    pub fn kill9(self) -> Result<String> {
        self.0.signal("KILL");
        Ok(self.0.finish(Duration::from_secs(30))?.2)
    }
}

/// Polls a count query until it returns `want` or the timeout passes; returns the last value.
pub async fn wait_for_count(conn: &mut PgConnection, sql: &'static str, want: i64, timeout: Duration) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await?;
        if n == want || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the sink has accounted for every message in the topic (stored, replayed or
/// dead-lettered), so that "nothing was added" is a finding and not a race.
pub async fn wait_accounted(conn: &mut PgConnection, topic: &str) -> Result<i64> {
    let size = topic_size(topic)?;
    let done =
        wait_for_count(conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", size, Duration::from_secs(240)).await?;
    ensure!(done == size, "the sink accounted for {done} of {size} messages");
    Ok(size)
}

/// Messages in a topic now: the sum of its partitions' high watermarks (from offset 0).
pub fn topic_size(topic: &str) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut n = 0;
    for p in md.topics()[0].partitions() {
        n += consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?.1;
    }
    Ok(n)
}

/// Messages per second of one sink (in a group of its own) draining `topic`, which holds
/// `messages`, into the database at `db_url`: measured from its first committed batch to its last,
/// so the group join, start-up and the first batch are left out. Prints `LABEL drain_s=..
/// sink_cpu_s=..`.
pub async fn drain_rate(db_url: &str, topic: &str, messages: u64, label: &str, extra: &[&str]) -> Result<f64> {
    let mut conn = PgConnection::connect(db_url).await?;
    let group = unique("bench");
    let sink = SinkProcess::start(db_url, topic, &group, extra)?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut t0, mut n0) = (None, 0i64);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets WHERE consumer_group = $1")
            .bind(&group)
            .fetch_one(&mut conn)
            .await?;
        let now = Instant::now();
        if n > 0 && t0.is_none() {
            (t0, n0) = (Some(now), n);
        }
        if n as u64 == messages {
            let secs = now.duration_since(t0.expect("first batch seen")).as_secs_f64();
            println!("{label} drain_s={secs:.2} sink_cpu_s={:.2}", sink.cpu_seconds().unwrap_or(f64::NAN));
            sink.stop()?;
            ensure!(secs > 0.0, "the first batch held everything: use more messages");
            return Ok((messages - n0 as u64) as f64 / secs);
        }
        ensure!(now < deadline, "sink did not drain the topic:\n{}", sink.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A dashboard's query with Grafana's variables as Grafana would fill them for these cameras.
pub fn grafana_vars(q: &str, cameras: &[&str]) -> String {
    q.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("=~\"$camera\"", &format!("=~\"({})\"", cameras.join("|")))
        .replace("IN ($camera)", &format!("IN ({})", cameras.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")))
}

/// A dashboard's SQL as Grafana sends it: its variables filled, `$__timeFilter(col)`,
/// `$__timeFrom()` and `$__timeTo()` as the last 6 hours (and the coming one).
pub fn grafana_sql(q: &str, cameras: &[&str]) -> String {
    let mut out = grafana_vars(q, cameras)
        .replace("$__timeFrom()", "(now() - interval '6 hours')")
        .replace("$__timeTo()", "(now() + interval '1 hour')");
    while let Some(start) = out.find("$__timeFilter(") {
        let end = out[start..].find(')').map(|e| start + e).expect("a closing parenthesis");
        let column = &out[start + "$__timeFilter(".len()..end];
        let filter = format!("{column} BETWEEN now() - interval '6 hours' AND now() + interval '1 hour'");
        out.replace_range(start..=end, &filter);
    }
    out
}

/// Every SQL query of the Grafana dashboards: (dashboard, panel title, SQL).
pub fn dashboard_sql() -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for name in ["pipeline-overview.json", "people.json"] {
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo_root().join("monitoring/grafana/dashboards").join(name))?)?;
        for panel in dash["panels"].as_array().context("panels")? {
            for target in panel["targets"].as_array().context("targets")? {
                if let Some(sql) = target["rawSql"].as_str() {
                    out.push((name.to_string(), panel["title"].as_str().unwrap_or("").to_string(), sql.to_string()));
                }
            }
        }
    }
    Ok(out)
}
