//! What the detector and the sink share besides the wire contract (`wire`): Kafka flags and
//! client plumbing, a schema registry client, backoff, secrets that are never shown, and the
//! telemetry set-up (logs, the metrics and health endpoint).

pub mod backoff;
pub mod cli;
pub mod kafka;
pub mod registry;
pub mod secret;
pub mod telemetry;
pub mod url;
