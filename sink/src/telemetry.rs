//! Prometheus metrics, served at `http://<--metrics-addr>/metrics` (liveness at `/livez`,
//! readiness at `/readyz` and `/healthz`) when that flag is set. The same figures go to the log
//! every `--report-every-s`, so the endpoint is optional. A leaf: it imports no other module.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::telemetry::{Heartbeat, Metrics, Probes};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const FRAMES: &str = "sink_frames_written_total";
pub const DETECTIONS: &str = "sink_detections_written_total";
pub const REPLAYED: &str = "sink_frames_replayed_total";
pub const CONFLICTS: &str = "sink_frames_conflicting_total";
pub const REFUSED: &str = "sink_rows_refused_total";
pub const FENCED: &str = "sink_partitions_fenced_total";
pub const DEAD_LETTERS: &str = "sink_dead_letters_total";
pub const BATCHES: &str = "sink_batches_total";
pub const REDONE: &str = "sink_batches_redone_total";
pub const BATCH_ROWS: &str = "sink_batch_rows";
pub const BATCH_SECONDS: &str = "sink_batch_write_seconds";
pub const LAG: &str = "sink_consumer_lag_messages";
pub const DATABASE_UP: &str = "sink_database_up";
pub const REGISTRY_LOOKUPS: &str = "sink_schema_registry_lookups_total";
pub const CAPTURE_TO_COMMIT: &str = "sink_capture_to_commit_seconds";
pub const NEWEST: &str = "sink_newest_captured_at_seconds";
pub const DEAD_LETTER_RETRIES: &str = "sink_dead_letter_retries_total";
pub const NOT_ADMITTED: &str = "sink_frames_not_admitted_total";
pub const MAINTENANCE_PASSES: &str = "sink_store_maintenance_passes_total";
pub const MAINTENANCE_LAST_SUCCESS: &str = "sink_store_maintenance_last_success_timestamp_seconds";
pub const MAINTENANCE_LONGEST_LOCK: &str = "sink_store_maintenance_longest_lock_seconds";
pub const DEFAULT_PARTITION_ROWS: &str = "sink_store_default_partition_rows";
pub const OFFSET_GAPS: &str = "sink_offset_gaps_total";

/// Starts the endpoint: live while `heartbeat` beats (the loop), ready while the database takes
/// writes.
pub fn serve(addr: SocketAddr, heartbeat: Heartbeat) -> Result<(), String> {
    let buckets: &[(&str, &[f64])] = &[
        (BATCH_ROWS, &[100.0, 500.0, 1000.0, 5000.0, 10000.0, 20000.0, 50000.0]),
        (BATCH_SECONDS, &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
        (CAPTURE_TO_COMMIT, &[0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0]),
    ];
    let metrics = Metrics::install(buckets)?;
    let ready = Arc::new(|| if database_up() { Ok("database: up".into()) } else { Err("the database does not take writes".into()) });
    metrics.serve(addr, Probes { ready, live: vec![heartbeat] })?;
    describe_counter!(FRAMES, "Frame rows written (re-sent frames already stored are not counted)");
    describe_counter!(DETECTIONS, "Detection rows written");
    describe_counter!(REPLAYED, "Frames delivered again with the content already stored (replays absorbed by the natural keys)");
    describe_counter!(
        CONFLICTS,
        "Frames delivered again with other content than the stored frame: the stored one is kept, the new one not merged"
    );
    describe_counter!(REGISTRY_LOOKUPS, "Schemas fetched from the schema registry by id, by result (found, unknown, failed)");
    describe_counter!(DEAD_LETTERS, "Messages sent to the dead-letter topic: invalid ones, and frames whose rows the database refused");
    describe_counter!(
        REFUSED,
        "Frames whose rows the database refused (a constraint, an encoding): sent to the dead-letter topic with its error"
    );
    describe_counter!(
        FENCED,
        "Partitions left out of a write because another sink had stored their offsets since (after a rebalance); read again"
    );
    describe_counter!(DEAD_LETTER_RETRIES, "Dead-letter sends tried again after an error that may pass (their partition waits)");
    describe_counter!(
        OFFSET_GAPS,
        "Offsets the consumer passed over between two messages of a partition (transaction markers, or messages retention deleted unread)"
    );
    describe_counter!(
        NOT_ADMITTED,
        "Frames sent to the dead-letter topic for a capture time outside the admission window (a camera clock that is wrong)"
    );
    describe_counter!(
        MAINTENANCE_PASSES,
        "Store maintenance passes (partitions made and dropped, retention) by result: ok, failed, skipped"
    );
    describe_gauge!(MAINTENANCE_LAST_SUCCESS, Unit::Seconds, "When this sink last completed a store maintenance pass, in Unix seconds");
    describe_gauge!(
        MAINTENANCE_LONGEST_LOCK,
        Unit::Seconds,
        "The longest DDL transaction of the last pass: the most a write or query waited for it"
    );
    describe_gauge!(DEFAULT_PARTITION_ROWS, "Rows in the table's default partition after the last pass: frames of days with no partition");
    describe_counter!(BATCHES, "Batches committed to PostgreSQL");
    describe_counter!(REDONE, "Batches redone through staging tables after a key conflict");
    describe_histogram!(BATCH_ROWS, "Rows (frames + detections) per batch");
    describe_histogram!(BATCH_SECONDS, Unit::Seconds, "Time to make one batch durable, retries included");
    describe_gauge!(LAG, "Messages behind the partition's end, from librdkafka statistics");
    describe_histogram!(CAPTURE_TO_COMMIT, Unit::Seconds, "From a frame's capture to the commit that stored it");
    describe_gauge!(NEWEST, Unit::Seconds, "The newest stored frame's captured_at per camera, in Unix seconds: how fresh the table is");
    describe_gauge!(DATABASE_UP, "1 while writes succeed, 0 while the database is unavailable");
    // Every counter from 0, so that a series exists before its first event (a dashboard or an
    // alert on dead letters has something to read while there are none).
    for name in [
        FRAMES,
        DETECTIONS,
        REPLAYED,
        CONFLICTS,
        REFUSED,
        FENCED,
        DEAD_LETTERS,
        DEAD_LETTER_RETRIES,
        NOT_ADMITTED,
        OFFSET_GAPS,
        BATCHES,
        REDONE,
    ] {
        metrics::counter!(name).increment(0);
    }
    set_database_up(true);
    Ok(())
}

static DATABASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The database takes writes (1), or not (0): the gauge, and what `/readyz` answers.
pub fn set_database_up(up: bool) {
    DATABASE.store(up, std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

fn database_up() -> bool {
    DATABASE.load(std::sync::atomic::Ordering::Relaxed)
}

/// A part's frames, (camera, captured_at), are durable: how long after capture, and how fresh each
/// camera's rows now are (`newest` keeps the latest per camera, so a replay of old frames does not
/// turn it back).
pub fn committed<'a>(
    frames: impl Iterator<Item = (&'a str, DateTime<Utc>)>,
    all_new: bool,
    newest: &mut std::collections::HashMap<String, i64>,
) {
    let now = Utc::now();
    for (camera, at) in frames {
        // Replayed frames were stored long ago: their age says nothing of this commit.
        if all_new {
            metrics::histogram!(CAPTURE_TO_COMMIT).record((now - at).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ms = at.timestamp_millis();
        let known = newest.entry(camera.to_string()).or_insert(i64::MIN);
        if ms > *known {
            *known = ms;
            metrics::gauge!(NEWEST, "camera" => camera.to_string()).set(ms as f64 / 1000.0);
        }
    }
}
