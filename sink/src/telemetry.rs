//! Prometheus metrics, served at `http://<--metrics-addr>/metrics` (liveness at `/livez`,
//! readiness at `/readyz` and `/healthz`) when that flag is set. The same figures go to the log
//! every `--report-every-s`, so the endpoint is optional. A leaf: it imports no other module.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use common::telemetry::{Heartbeat, Metrics, Probes};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const FRAMES: &str = "sink_frames_written_total";
pub const DETECTIONS: &str = "sink_detections_written_total";
pub const REPLAYED: &str = "sink_frames_replayed_total";
pub const CONFLICTS: &str = "sink_frames_conflicting_total";
pub const REFUSED: &str = "sink_rows_refused_total";
pub const FENCED: &str = "sink_partitions_fenced_total";
pub const FENCED_FRAMES: &str = "sink_fenced_frames_total";
pub const DEAD_LETTERS: &str = "sink_dead_letters_total";
pub const BATCHES: &str = "sink_batches_total";
pub const REDONE: &str = "sink_batches_redone_total";
pub const ZONE_EVENTS: &str = "sink_zone_events_written_total";
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
    metrics.serve(addr, Probes { ready, live: vec![heartbeat], extra: Some(Arc::new(render_owned)) })?;
    describe_counter!(FRAMES, "Frame rows written (re-sent frames already stored are not counted)");
    describe_counter!(DETECTIONS, "Detection rows written");
    describe_counter!(REPLAYED, "Frames delivered again with the content already stored (replays absorbed by the natural keys)");
    describe_counter!(
        CONFLICTS,
        "Frames delivered again with other content than the stored frame: the stored one is kept, the new one not merged"
    );
    describe_counter!(REGISTRY_LOOKUPS, "Schemas fetched from the schema registry by id, by result (found, unknown, failed)");
    describe_counter!(
        DEAD_LETTERS,
        "Messages sent to the dead-letter topic: invalid ones, frames whose rows the database refused, and fenced frames"
    );
    describe_counter!(
        REFUSED,
        "Frames whose rows the database refused (a constraint, an encoding): sent to the dead-letter topic with its error"
    );
    describe_counter!(
        FENCED,
        "Partitions left out of a write because another sink had stored their offsets since (after a rebalance); read again"
    );
    describe_counter!(
        FENCED_FRAMES,
        "Frames of an older epoch than their camera's newest stored (a fleet host that has lost the camera), by camera: sent to the dead-letter topic"
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
    describe_counter!(ZONE_EVENTS, "Zone and line events (wire v3's tracker.rules) stored new; a replayed event is not counted");
    describe_histogram!(BATCH_ROWS, "Rows (frames + detections) per batch");
    describe_histogram!(BATCH_SECONDS, Unit::Seconds, "Time to make one batch durable, retries included");
    describe_histogram!(CAPTURE_TO_COMMIT, Unit::Seconds, "From a frame's capture to the commit that stored it");
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

/// A part's frames, (camera, partition, captured_at), are durable: how long after capture, and
/// how fresh each camera's rows now are (the newest per camera is kept, so a replay of old frames
/// does not turn it back).
pub fn committed<'a>(frames: impl Iterator<Item = (&'a str, i32, DateTime<Utc>)>, all_new: bool) {
    let now = Utc::now();
    let mut owned = OWNED.lock().unwrap();
    for (camera, partition, at) in frames {
        // Replayed frames were stored long ago: their age says nothing of this commit.
        if all_new {
            metrics::histogram!(CAPTURE_TO_COMMIT).record((now - at).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ms = at.timestamp_millis();
        let known = owned.newest.entry(camera.to_string()).or_insert((partition, i64::MIN));
        *known = (partition, known.1.max(ms));
    }
}

/// The series that belong to the partitions this sink holds now: each sink shows only its own, so
/// that sums and alerts over many sinks count each partition and camera once, and a partition
/// given to another sink leaves no frozen value behind. The recorder cannot remove a series, so
/// these are rendered here (`render_owned`).
#[derive(Default)]
struct Owned {
    /// Per partition: messages in the log past the offset stored in the database.
    lag: BTreeMap<i32, i64>,
    /// Per camera: its partition, and its newest stored frame's capture time in Unix milliseconds.
    newest: BTreeMap<String, (i32, i64)>,
}

static OWNED: Mutex<Owned> = Mutex::new(Owned { lag: BTreeMap::new(), newest: BTreeMap::new() });

/// The lag of every partition held now (the others' series go).
pub fn set_lag(lag: BTreeMap<i32, i64>) {
    OWNED.lock().unwrap().lag = lag;
}

/// These partitions are no longer this sink's: their lag and their cameras' freshness go.
pub fn forget_partitions(gone: &BTreeSet<i32>) {
    let mut owned = OWNED.lock().unwrap();
    owned.lag.retain(|p, _| !gone.contains(p));
    owned.newest.retain(|_, (p, _)| !gone.contains(p));
}

fn render_owned() -> String {
    let owned = OWNED.lock().unwrap();
    let mut out = format!(
        "# HELP {LAG} Messages in the partition's log past the next offset stored in the database with the rows\n# TYPE {LAG} gauge\n"
    );
    for (p, lag) in &owned.lag {
        let _ = writeln!(out, "{LAG}{{partition=\"{p}\"}} {lag}");
    }
    let _ = write!(
        out,
        "# HELP {NEWEST} The newest stored frame's captured_at per camera, in Unix seconds: how fresh the table is\n# TYPE {NEWEST} gauge\n"
    );
    for (camera, (_, ms)) in &owned.newest {
        let _ = writeln!(out, "{NEWEST}{{camera=\"{}\"}} {}", escape_label(camera), *ms as f64 / 1000.0);
    }
    out
}

/// A label value as the Prometheus text format writes it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_series_go_with_their_partitions() {
        let at = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        set_lag(BTreeMap::from([(0, 5), (1, 7)]));
        committed([("door", 0, at(2_000)), ("door", 0, at(1_000)), ("ya\"rd", 1, at(3_000))].into_iter(), false);
        let shown = render_owned();
        assert!(shown.contains("sink_consumer_lag_messages{partition=\"1\"} 7"), "{shown}");
        assert!(shown.contains("sink_newest_captured_at_seconds{camera=\"door\"} 2\n"), "the newest is kept: {shown}");
        assert!(shown.contains("sink_newest_captured_at_seconds{camera=\"ya\\\"rd\"} 3"), "{shown}");
        forget_partitions(&BTreeSet::from([1]));
        let shown = render_owned();
        assert!(!shown.contains("partition=\"1\"") && !shown.contains("rd\""), "{shown}");
        assert!(shown.contains("partition=\"0\"} 5") && shown.contains("camera=\"door\""), "{shown}");
    }
}
