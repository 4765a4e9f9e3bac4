//! Command-line and environment configuration of the detector.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::error::DetectorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// Publish to a Kafka topic (default).
    Kafka,
    /// Write the same messages as JSON lines to standard output; no broker needed.
    Stdout,
}

/// Reads video, finds people with a YOLO model in ONNX Runtime, and publishes one JSON message per
/// frame (wire schema v1) to Kafka.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Video file, image file, rtsp:// or http(s):// URL, or V4L2 device (/dev/video0).
    #[arg(long, env = "DETECTOR_SOURCE")]
    pub source: String,

    /// Camera id: the Kafka message key and the `camera_id` of every row.
    #[arg(long, env = "DETECTOR_CAMERA_ID", default_value = "cam0")]
    pub camera_id: String,

    /// ONNX model file (YOLOv8/11 detect or pose layout).
    #[arg(long, env = "DETECTOR_MODEL", default_value = "models/yolo11n-pose.onnx")]
    pub model: PathBuf,

    /// Minimum detection score.
    #[arg(long, env = "DETECTOR_CONF", default_value_t = 0.25)]
    pub conf: f32,

    /// IoU above which NMS suppresses the weaker of two boxes (Ultralytics' predict default: 0.7).
    #[arg(long, env = "DETECTOR_IOU", default_value_t = 0.7)]
    pub iou: f32,

    /// Class names to keep, comma-separated.
    #[arg(long, env = "DETECTOR_CLASSES", value_delimiter = ',', default_value = "person")]
    pub classes: Vec<String>,

    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, env = "DETECTOR_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Where messages go.
    #[arg(long, env = "DETECTOR_OUTPUT", value_enum, default_value_t = OutputKind::Kafka)]
    pub output: OutputKind,

    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Kafka topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "detections")]
    pub topic: String,

    /// Extra librdkafka producer property, as kcat takes it (repeatable): -X security.protocol=SSL
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = kafka_support::parse_property)]
    pub kafka_properties: Vec<(String, String)>,

    /// How long to wait for outstanding deliveries at exit, in seconds.
    #[arg(long, env = "DETECTOR_FLUSH_TIMEOUT", default_value_t = 30)]
    pub flush_timeout_s: u64,
}

impl Config {
    /// Checks what clap's types cannot; run before anything is opened.
    pub fn validate(&self) -> Result<(), DetectorError> {
        if !(0.0..=1.0).contains(&self.conf) {
            return Err(DetectorError::Config(format!("--conf must be within 0 and 1, got {}", self.conf)));
        }
        if !(0.0..=1.0).contains(&self.iou) {
            return Err(DetectorError::Config(format!("--iou must be within 0 and 1, got {}", self.iou)));
        }
        if self.camera_id.is_empty() || self.camera_id.len() > 128 || self.camera_id.chars().any(char::is_control) {
            return Err(DetectorError::Config("--camera-id must be 1 to 128 characters, none of them control characters".into()));
        }
        if self.classes.iter().all(|c| c.trim().is_empty()) {
            return Err(DetectorError::Config("--classes names no class".into()));
        }
        Ok(())
    }

    pub fn intra_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_out_of_range_thresholds() {
        let mut c = Config::parse_from(["detector", "--source", "x.mp4"]);
        assert!(c.validate().is_ok());
        c.conf = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("--conf"));
    }
}
