//! A 3-broker Kafka cluster (KRaft; `scripts/services.sh start cluster`) and a topic with three
//! copies of each partition, two of which must take a write (`min.insync.replicas=2`): the broker
//! leading the camera's partition is killed with SIGKILL while a detector publishes and two sinks
//! consume, then started again. Every frame is stored once and nothing is dead-lettered. Alone in
//! its file: it runs a cluster beside the shared broker. The cluster makes no topic on use, as
//! production brokers often do not: a sink whose dead-letter topic is missing stops at start. And a
//! dead letter that waits for its topic's replicas holds back only its own partition.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const CLUSTER: &str = "127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092";

/// Stops the cluster when dropped, however the test ends.
struct Cluster;

/// One test at a time runs the cluster.
static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one = CLUSTER_LOCK.lock().await;
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

    // These brokers make no topic on use: a sink whose dead-letter topic is missing says so and
    // stops at once, rather than find out at its first invalid message.
    let (status, log) = SinkProcess::start_on(CLUSTER, &db.url, &topic, &unique("group"), &[])?.wait_exit(Duration::from_secs(60))?;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(errors.len() == 1 && errors[0].contains(&format!("dead-letter topic {topic}.dlq does not exist")), "{log}");
    create_topic_at(CLUSTER, &format!("{topic}.dlq"), 1, 3, &[]).await?;

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

/// A dead letter that cannot be delivered for a while (its partition has one replica in sync of
/// the two it needs: node 2 is down): only its own partition waits. The other partition's frames
/// keep being stored, the consumer keeps being polled past `max.poll.interval.ms` (no revoke), and
/// once node 2 is back the dead letter goes out and its partition's frames follow, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_must_wait_holds_back_only_its_partition() -> Result<()> {
    let _one = CLUSTER_LOCK.lock().await;
    services(&["start", "cluster"], false)?;
    let _cluster = Cluster;
    let topic = unique("dlqwaits");
    let dlq = format!("{topic}.dlq");
    // The source on nodes 1 and 3, the dead letters on 1 and 2.
    create_topic_on(CLUSTER, &topic, 2, TopicReplication::Variable(&[&[1, 3], &[3, 1]]), &[]).await?;
    create_topic_on(CLUSTER, &dlq, 1, TopicReplication::Variable(&[&[1, 2]]), &[("min.insync.replicas", "2")]).await?;
    let db = TestDb::create("dlqwaits").await?;
    migrate(&db.url)?;
    services(&["kill", "cluster-2"], false)?;

    let interval = ["-X", "max.poll.interval.ms=8000", "-X", "session.timeout.ms=6000"];
    let sink = SinkProcess::start_on(CLUSTER, &db.url, &topic, &unique("group"), &interval)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.log().contains("partitions assigned partitions=[0, 1]") {
        ensure!(Instant::now() < deadline, "no assignment:\n{}", sink.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let frames = |camera: &str, from: u64| -> Vec<Vec<u8>> { (from..from + 20).map(|s| synthetic_frame(camera, s, 1).to_json()).collect() };
    produce_to(CLUSTER, &topic, 0, &[b"{\"schema_version\": 2}".to_vec()])?;
    produce_to(CLUSTER, &topic, 0, &frames("behind", 0))?;
    let mut conn = db.connect().await?;
    // Past the poll interval, twice over, while partition 1 gets frames.
    for round in 0..3 {
        produce_to(CLUSTER, &topic, 1, &frames("beside", round * 20))?;
        let want = 20 * (round as i64 + 1);
        let stored =
            wait_for_count(&mut conn, "SELECT count(*) FROM frames WHERE camera_id = 'beside'", want, Duration::from_secs(30)).await?;
        assert_eq!(stored, want, "{}", sink.log());
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let behind: i64 = sqlx::query_scalar("SELECT count(*) FROM frames WHERE camera_id = 'behind'").fetch_one(&mut conn).await?;
    assert_eq!(behind, 0, "{}", sink.log());

    services(&["start", "cluster-2"], false)?;
    let behind = wait_for_count(&mut conn, "SELECT count(*) FROM frames WHERE camera_id = 'behind'", 20, Duration::from_secs(120)).await?;
    let next =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 21 + 60, Duration::from_secs(30))
            .await?;
    let log = sink.stop()?;
    assert_eq!((behind, next), (20, 81), "{log}");
    assert_eq!(read_topic_at(CLUSTER, &dlq, Duration::from_secs(30))?.len(), 1, "{log}");
    let before_stop = &log[..log.find("shutting down").unwrap_or(log.len())];
    assert!(!before_stop.contains("partitions revoked") && !log.contains("MAXPOLL"), "the group kept the sink:\n{log}");
    assert_eq!(log.matches("partitions assigned").count(), 1, "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
    Ok(())
}
