//! The detector's stages, one module per step of a frame's path: source -> capture (pacing,
//! preprocess, the capture policy) -> worker (infer, batching) -> publish (decode, the output),
//! wired into threads by `pipeline`, each camera a `lane`. `catalog` is `detector cameras`, the
//! cameras as data in Kafka; `fleet` is `detector --fleet`, hosts sharing them in a
//! group. A library so that the benchmark can drive the stages; `main.rs` is the command line.

pub mod capture;
pub mod catalog;
pub mod config;
pub mod decode;
pub mod error;
pub mod fleet;
pub mod identity;
pub mod infer;
pub mod lane;
pub mod pacing;
pub mod pipeline;
pub mod preprocess;
pub mod privacy;
pub mod publish;
pub mod reconnect;
pub mod snapshot;
pub mod source;
pub mod stats;
pub mod track;
pub mod worker;
