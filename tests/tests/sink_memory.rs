//! The database away while 200,000 messages arrive, and a sink leaving the group meanwhile: the
//! partitions (those assigned during the outage too) stay paused, the remaining sink's memory stays
//! bounded, and every frame lands exactly once when the database returns. Alone in its file: it
//! stops the shared PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;

/// The bound this test holds the sink to while the database is away: the batch cap (20,000 rows,
/// about 7 MB of messages), librdkafka's prefetch queue (16 MB), and the process itself.
const RSS_BOUND_MIB: f64 = 100.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_away_under_200000_messages_bounds_memory_and_loses_nothing() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("memory", 4).await?;
    let group = unique("group");
    // Static members do not leave the group when they stop: b's partitions reach a after the
    // session timeout, shortened here to fall within the outage.
    let short = ["-X", "session.timeout.ms=6000"];
    let a = SinkProcess::start(&db.url, &topic, &group, &short)?;
    let b = SinkProcess::start(&db.url, &topic, &group, &short)?;
    let holds = |log: String| log.lines().any(|l| l.contains("partitions assigned partitions=[") && !l.contains("partitions=[]"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(holds(a.log()) && holds(b.log())) {
        ensure!(Instant::now() < deadline, "the group did not settle:\n{}\n{}", a.log(), b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle_rss = a.rss_mib().unwrap_or(0.0);

    services(&["stop", "postgres"], false)?;
    let total = 200_000u64;
    let producer = spawn_producer(&topic, 16, total, 10_000, Duration::from_millis(0));
    let mut peak: f64 = 0.0;
    let mut b = Some(b);
    let t = Instant::now();
    while !producer.is_finished() || t.elapsed() < Duration::from_secs(20) {
        peak = peak.max(a.rss_mib().unwrap_or(0.0));
        // A member leaves mid-outage: its partitions move to `a` while the database is away.
        if t.elapsed() > Duration::from_secs(5) {
            if let Some(b) = b.take() {
                let _ = b.stop();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = producer.join().expect("producer")?;
    ensure!(sent == total);
    let a_log_during = a.log();
    services(&["start", "postgres"], false)?;

    let mut conn = db.connect().await?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", total as i64, Duration::from_secs(300)).await?;
    let log = a.stop()?;
    println!("rss_idle_mib={idle_rss:.0} rss_peak_during_outage_mib={peak:.0} bound_mib={RSS_BOUND_MIB}");
    assert_eq!(stored, total as i64, "{log}");
    let detections: i64 = sqlx::query_scalar("SELECT count(*) FROM detections").fetch_one(&mut conn).await?;
    assert_eq!(detections, 3 * total as i64);
    let next: i64 = sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM sink_offsets").fetch_one(&mut conn).await?;
    assert_eq!(next, total as i64, "the stored offsets cover every message");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak:.0} MiB while the database was away:\n{a_log_during}");
    assert!(
        a_log_during.contains("partitions revoked") || a_log_during.matches("partitions assigned").count() >= 2,
        "b's partitions moved to a:\n{a_log_during}"
    );
    assert!(a_log_during.contains("cannot read stored offsets"), "they were assigned while the database was away:\n{a_log_during}");
    assert!(log.contains("partition re-read from the stored offset"), "{log}");
    Ok(())
}
