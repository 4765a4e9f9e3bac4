//! Command-line and environment configuration of the detector.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::error::DetectorError;
use crate::source::{RtspTransport, SourceKind};

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

    /// Video files: start again at the end, forever; frame_seq and pts_ms keep growing.
    #[arg(long = "loop", env = "DETECTOR_LOOP")]
    pub looped: bool,

    /// Video files: release frames at the file's own rate, as a camera would, and drop frames
    /// that inference cannot keep up with (the live policy) instead of waiting for it.
    #[arg(long, env = "DETECTOR_REALTIME")]
    pub realtime: bool,

    /// At most this many frames a second go to inference; capture skips the others (0: no cap).
    /// Files are paced by their pts, live sources by arrival time.
    #[arg(long, env = "DETECTOR_MAX_FPS", default_value_t = 0.0)]
    pub max_fps: f64,

    /// How rtsp:// streams are carried.
    #[arg(long, env = "DETECTOR_RTSP_TRANSPORT", value_enum, default_value_t = RtspTransport::Tcp)]
    pub rtsp_transport: RtspTransport,

    /// Live streams (FFmpeg; not V4L2 devices): seconds opening may take. It includes FFmpeg's
    /// probe of the stream (up to 5 s of it), so keep it well above that.
    #[arg(long, env = "DETECTOR_OPEN_TIMEOUT", default_value_t = 20)]
    pub open_timeout_s: u64,

    /// Live streams (FFmpeg; not V4L2 devices): seconds without a frame before the stream counts
    /// as stalled and is reopened.
    #[arg(long, env = "DETECTOR_READ_TIMEOUT", default_value_t = 10)]
    pub read_timeout_s: u64,

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

    /// Write JPEGs of frames with detections here, boxes and skeletons drawn.
    #[arg(long, env = "DETECTOR_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// At most one snapshot per this many seconds of video (by the frames' timestamps).
    #[arg(long, env = "DETECTOR_SNAPSHOT_EVERY", default_value_t = 5.0)]
    pub snapshot_every_s: f64,

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
        if !wire::is_label(&self.camera_id, wire::MAX_LABEL_CHARS) {
            return Err(DetectorError::Config("--camera-id must be 1 to 128 characters, none of them control characters".into()));
        }
        if !(self.snapshot_every_s.is_finite() && self.snapshot_every_s >= 0.0) {
            return Err(DetectorError::Config(format!("--snapshot-every-s must be 0 or more, got {}", self.snapshot_every_s)));
        }
        if let Some(dir) = &self.snapshot_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DetectorError::Config(format!("--snapshot-dir {}: {e}", dir.display())))?;
        }
        if self.classes.iter().all(|c| c.trim().is_empty()) {
            return Err(DetectorError::Config("--classes names no class".into()));
        }
        if !(self.max_fps.is_finite() && self.max_fps >= 0.0) {
            return Err(DetectorError::Config(format!("--max-fps must be 0 (no cap) or more, got {}", self.max_fps)));
        }
        if self.open_timeout_s == 0 || self.read_timeout_s == 0 {
            return Err(DetectorError::Config("--open-timeout-s and --read-timeout-s must be at least 1".into()));
        }
        if (self.looped || self.realtime) && SourceKind::of(&self.source) != SourceKind::File {
            return Err(DetectorError::Config(
                "--loop and --realtime apply to video files only (a live source is real time already, and is reopened when it ends)"
                    .into(),
            ));
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

    #[test]
    fn max_fps_must_be_a_rate() {
        for bad in ["-1", "NaN", "inf"] {
            let c = Config::parse_from(["detector", "--source", "x.mp4", &format!("--max-fps={bad}")]);
            assert!(c.validate().unwrap_err().to_string().contains("--max-fps"), "{bad}");
        }
        let c = Config::parse_from(["detector", "--source", "rtsp://cam/1", "--max-fps", "2.5"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn loop_and_realtime_are_for_files() {
        let ok = Config::parse_from(["detector", "--source", "x.mp4", "--loop", "--realtime"]);
        assert!(ok.validate().is_ok());
        for (source, flag) in [("rtsp://cam/1", "--loop"), ("/dev/video0", "--realtime"), ("a.png", "--loop")] {
            let c = Config::parse_from(["detector", "--source", source, flag]);
            assert!(c.validate().unwrap_err().to_string().contains("video files only"), "{source} {flag}");
        }
    }
}
