//! Frame sources through OpenCV: video files, still images, and live streams and devices.

use std::path::Path;

use chrono::{DateTime, Utc};
use opencv::core::Mat;
use opencv::prelude::*;
use opencv::{imgcodecs, videoio};

use crate::error::{Blame, DetectorError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A video file: every frame, in decode order, nothing dropped.
    File,
    /// A still image: one frame.
    Image,
    /// A camera or stream: real time matters more than completeness.
    Live,
}

impl SourceKind {
    pub fn of(uri: &str) -> Self {
        let lower = uri.to_ascii_lowercase();
        if ["rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://"]
            .iter()
            .any(|p| lower.starts_with(p))
            || lower.starts_with("/dev/video")
        {
            SourceKind::Live
        } else if [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"].iter().any(|e| lower.ends_with(e)) {
            SourceKind::Image
        } else {
            SourceKind::File
        }
    }
}

/// One decoded frame, BGR.
pub struct Frame {
    /// 0-based decode order.
    pub seq: u64,
    pub pts_ms: i64,
    pub captured_at: DateTime<Utc>,
    pub image: Mat,
}

enum Reader {
    Video(videoio::VideoCapture),
    Image(Option<Mat>),
}

pub struct Source {
    pub uri: String,
    pub kind: SourceKind,
    reader: Reader,
    next_seq: u64,
}

impl Source {
    pub fn open(uri: &str) -> Result<Self, DetectorError> {
        let kind = SourceKind::of(uri);
        if kind != SourceKind::Live && !Path::new(uri).is_file() {
            return Err(DetectorError::source(uri, Blame::User, "no such file"));
        }
        let reader = match kind {
            SourceKind::Image => {
                let img = imgcodecs::imread(uri, imgcodecs::IMREAD_COLOR)
                    .map_err(|e| DetectorError::source(uri, Blame::User, e))?;
                if img.empty() {
                    return Err(DetectorError::source(uri, Blame::User, "not a readable image"));
                }
                Reader::Image(Some(img))
            }
            SourceKind::File | SourceKind::Live => {
                let api = if uri.starts_with("/dev/video") { videoio::CAP_V4L2 } else { videoio::CAP_FFMPEG };
                let blame = if kind == SourceKind::Live { Blame::External } else { Blame::User };
                let cap = videoio::VideoCapture::from_file(uri, api)
                    .map_err(|e| DetectorError::source(uri, blame, e))?;
                if !cap.is_opened().unwrap_or(false) {
                    let why = if kind == SourceKind::Live {
                        "cannot connect to the stream or device"
                    } else {
                        "OpenCV cannot decode it (corrupt, or not a supported video format)"
                    };
                    return Err(DetectorError::source(uri, blame, why));
                }
                Reader::Video(cap)
            }
        };
        Ok(Source { uri: uri.to_string(), kind, reader, next_seq: 0 })
    }

    /// The next frame, or `None` at the end of the source.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DetectorError> {
        let (image, pts_ms) = match &mut self.reader {
            Reader::Image(img) => match img.take() {
                Some(img) => (img, 0),
                None => return Ok(None),
            },
            Reader::Video(cap) => {
                let mut mat = Mat::default();
                let blame = if self.kind == SourceKind::Live { Blame::External } else { Blame::User };
                let ok = cap.read(&mut mat).map_err(|e| DetectorError::source(&self.uri, blame, e))?;
                if !ok || mat.empty() {
                    return Ok(None);
                }
                let pts = cap.get(videoio::CAP_PROP_POS_MSEC).unwrap_or(0.0);
                (mat, pts.round() as i64)
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(Frame { seq, pts_ms, captured_at: Utc::now(), image }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_uri() {
        assert_eq!(SourceKind::of("rtsp://cam/1"), SourceKind::Live);
        assert_eq!(SourceKind::of("HTTPS://x/y.mjpg"), SourceKind::Live);
        assert_eq!(SourceKind::of("/dev/video0"), SourceKind::Live);
        assert_eq!(SourceKind::of("samples/basketball1.PNG"), SourceKind::Image);
        assert_eq!(SourceKind::of("samples/vtest.avi"), SourceKind::File);
    }

    #[test]
    fn missing_file_is_the_users_error() {
        let err = Source::open("/nonexistent/video.mp4").err().unwrap();
        assert_eq!(err.blame(), Blame::User);
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_video_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-video-{}.mp4", std::process::id()));
        std::fs::write(&path, b"this is not a video").unwrap();
        let err = Source::open(path.to_str().unwrap()).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("cannot decode"), "{err}");
    }
}
