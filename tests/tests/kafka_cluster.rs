//! A 3-broker Kafka cluster (KRaft; `scripts/services.sh start cluster`) and a topic with three
//! copies of each partition, two of which must take a write (`min.insync.replicas=2`): the broker
//! leading the camera's partition is killed with SIGKILL while a detector publishes and two sinks
//! consume, then started again. Every frame is stored once and nothing is dead-lettered. Alone in
//! its file: it runs a cluster beside the shared broker.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const CLUSTER: &str = "127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092";

/// Stops the cluster when dropped, however the test ends.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = services(&["stop", "cluster"], false);
    }
}

/// The node (1 to 3) leading a partition.
fn leader_of(topic: &str, partition: i32) -> Result<i32> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", CLUSTER).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let p = md.topics()[0].partitions().iter().find(|p| p.id() == partition).expect("the partition");
    Ok(p.leader())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_loses_and_duplicates_nothing() -> Result<()> {
    services(&["start", "cluster"], false)?;
    let _cluster = Cluster;
    let topic = unique("cluster");
    create_topic_at(CLUSTER, &topic, 4, 3, &[("min.insync.replicas", "2")]).await?;
    let db = TestDb::create("cluster").await?;
    migrate(&db.url)?;
    let dir = TempDir::new("cluster")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(25))?;
    let frames = ffprobe_frame_count(&clip)? as i64;

    let group = unique("group");
    let a = SinkProcess::start_on(CLUSTER, &db.url, &topic, &group, &[])?;
    let b = SinkProcess::start_on(CLUSTER, &db.url, &topic, &group, &[])?;
    let detector = Spawned::start(Command::new(bin("detector")).arg("--source").arg(&clip).args([
        "--model",
        model().to_str().unwrap(),
        "--camera-id",
        "lobby",
        "--topic",
        &topic,
        "--brokers",
        CLUSTER,
    ]))?;
    let mut conn = db.connect().await?;
    let first = wait_for_count(&mut conn, "SELECT least(count(*), 40) FROM frames", 40, Duration::from_secs(120)).await?;
    ensure!(first == 40, "no rows before the kill:\n{}\n{}", a.log(), b.log());
    // Kill the broker that leads the camera's partition, as a crash.
    let partition = read_topic_at(CLUSTER, &topic, Duration::from_secs(30))?.first().expect("a message").partition;
    let leader = leader_of(&topic, partition)?;
    ensure!((1..=3).contains(&leader), "leader {leader}");
    let killed_at: i64 = sqlx::query_scalar("SELECT count(*) FROM frames").fetch_one(&mut conn).await?;
    services(&["kill", &format!("cluster-{leader}")], false)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    services(&["start", &format!("cluster-{leader}")], false)?;
    eprintln!(
        "cluster: node {leader} (leader of partition {partition}) killed at {killed_at} of {frames} frames, back after {:.0} s",
        t.elapsed().as_secs_f64()
    );

    let (status, _, stderr) = detector.finish(Duration::from_secs(600))?;
    ensure!(status.success(), "detector: {status}\n{stderr}");
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", frames, Duration::from_secs(180)).await?;
    let (log_a, log_b) = (a.stop()?, b.stop()?);
    let both = format!("--- a:\n{log_a}\n--- b:\n{log_b}");
    assert!(killed_at < frames, "the kill fell mid-stream");
    assert_eq!(stored, frames, "{both}");
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT frame_seq) FROM frames").fetch_one(&mut conn).await?;
    assert_eq!(distinct, frames);
    let published = read_topic_at(CLUSTER, &topic, Duration::from_secs(60))?;
    assert_eq!(published.len() as i64, frames, "one message per frame: the idempotent producer sent none twice");
    assert_eq!(read_topic_at(CLUSTER, &format!("{topic}.dlq"), Duration::from_secs(30))?.len(), 0, "{both}");
    for log in [&log_a, &log_b] {
        assert_eq!(log_field(log, "progress", "dead_letters"), Some(0), "{both}");
    }
    Ok(())
}
