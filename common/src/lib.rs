//! What the detector and the sink share besides the wire contract (`wire`): Kafka client plumbing
//! and a schema registry client.

pub mod kafka;
pub mod registry;
