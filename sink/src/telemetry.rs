//! Prometheus metrics, served at `http://<--metrics-addr>/metrics` when that flag is set. The same
//! figures go to the log every `--report-every-s`, so the endpoint is optional.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::error::SinkError;

pub const FRAMES: &str = "sink_frames_written_total";
pub const DETECTIONS: &str = "sink_detections_written_total";
pub const REPLAYED: &str = "sink_frames_replayed_total";
pub const CONFLICTS: &str = "sink_frames_conflicting_total";
pub const DEAD_LETTERS: &str = "sink_dead_letters_total";
pub const BATCHES: &str = "sink_batches_total";
pub const REDONE: &str = "sink_batches_redone_total";
pub const BATCH_ROWS: &str = "sink_batch_rows";
pub const BATCH_SECONDS: &str = "sink_batch_write_seconds";
pub const LAG: &str = "sink_consumer_lag_messages";
pub const DATABASE_UP: &str = "sink_database_up";
pub const REGISTRY_LOOKUPS: &str = "sink_schema_registry_lookups_total";

/// Starts the endpoint on the current tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<(), SinkError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), &[100.0, 500.0, 1000.0, 5000.0, 10000.0, 20000.0, 50000.0])
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(BATCH_SECONDS.into()), &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0])
        })
        .and_then(|b| b.install())
        .map_err(|e| SinkError::Config(format!("--metrics-addr {addr}: {e}")))?;
    describe_counter!(FRAMES, "Frame rows written (re-sent frames already stored are not counted)");
    describe_counter!(DETECTIONS, "Detection rows written");
    describe_counter!(REPLAYED, "Frames delivered again with the content already stored (replays absorbed by the natural keys)");
    describe_counter!(
        CONFLICTS,
        "Frames delivered again with other content than the stored frame: the stored one is kept, the new one not merged"
    );
    describe_counter!(REGISTRY_LOOKUPS, "Schemas fetched from the schema registry by id, by result (found, unknown, failed)");
    describe_counter!(DEAD_LETTERS, "Invalid messages sent to the dead-letter topic");
    describe_counter!(BATCHES, "Batches committed to PostgreSQL");
    describe_counter!(REDONE, "Batches redone through staging tables after a key conflict");
    describe_histogram!(BATCH_ROWS, "Rows (frames + detections) per batch");
    describe_histogram!(BATCH_SECONDS, Unit::Seconds, "Time to make one batch durable, retries included");
    describe_gauge!(LAG, "Messages behind the partition's end, from librdkafka statistics");
    describe_gauge!(DATABASE_UP, "1 while writes succeed, 0 while the database is unavailable");
    metrics::gauge!(DATABASE_UP).set(1.0);
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}
