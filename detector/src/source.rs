//! Frame sources through OpenCV: video files, still images, and live streams and devices.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use opencv::core::{Mat, Vector};
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

/// The URL schemes of live streams, read through FFmpeg.
pub const LIVE_SCHEMES: [&str; 7] = ["rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp"];

impl SourceKind {
    pub fn of(uri: &str) -> Self {
        let lower = uri.to_ascii_lowercase();
        if LIVE_SCHEMES.iter().any(|s| lower.strip_prefix(s).is_some_and(|rest| rest.starts_with("://"))) || lower.starts_with("/dev/video")
        {
            SourceKind::Live
        } else if [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"].iter().any(|e| lower.ends_with(e)) {
            SourceKind::Image
        } else {
            SourceKind::File
        }
    }
}

/// One frame taken from the source: decoded by the codec (which must see every frame), but not
/// yet converted to a BGR image; [`Source::image`] does that, only for the frames that are kept.
pub struct Frame {
    /// 0-based decode order; it keeps counting across a reopened live source and a looped file.
    pub seq: u64,
    pub pts_ms: i64,
    pub captured_at: DateTime<Utc>,
}

/// How to open and read a source, beyond its URI.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Files: start again at the end (`--loop`).
    pub looped: bool,
    /// Live streams through FFmpeg: the longest an open, and a read, may take before it counts
    /// as failed, so that a stalled stream is noticed and reopened.
    pub open_timeout: Duration,
    pub read_timeout: Duration,
}

enum Reader {
    Video(videoio::VideoCapture),
    Image(Option<Mat>),
}

pub struct Source {
    pub uri: String,
    pub kind: SourceKind,
    opts: SourceOptions,
    /// None while a live source is away.
    reader: Option<Reader>,
    next_seq: u64,
    /// Added to the decoder's pts, so that a looped file's pts keep growing from pass to pass.
    pts_offset_ms: i64,
    /// The last pts handed out and the stream's frame period: where the next pass starts.
    last_pts_ms: i64,
    frame_ms: i64,
    /// A video file: the frames its container announces, and those read in this pass.
    announced: Option<u64>,
    pass_frames: u64,
    /// An image source's one frame, taken by `read` and handed out by `image`.
    grabbed_image: Option<Mat>,
    /// Times the source has been opened: a live stream's pts start again with each.
    sessions: u64,
}

/// Frames a file may come short of what its container announces before that counts as truncated
/// (some containers only estimate their count): 1 %, and at least 2.
fn short_by_too_many(read: u64, announced: u64) -> bool {
    read < announced && announced - read > (announced / 100).max(2)
}

impl Source {
    /// Opens a file or an image, failing at once when it is unreadable. A live source that cannot
    /// be opened now is returned unopened, with a warning: cameras come up later, and
    /// `reconnect::next_live_frame` keeps trying.
    pub fn open(uri: &str, opts: SourceOptions) -> Result<Self, DetectorError> {
        let kind = SourceKind::of(uri);
        if kind != SourceKind::Live {
            match std::fs::metadata(uri) {
                Ok(m) if m.is_dir() => return Err(DetectorError::source(uri, Blame::User, "is a directory, not a video file or an image")),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DetectorError::source(uri, Blame::User, "no such file")),
                Err(e) => return Err(DetectorError::source(uri, Blame::User, e)),
            }
        }
        let mut source = Source {
            uri: uri.to_string(),
            kind,
            opts,
            reader: None,
            next_seq: 0,
            pts_offset_ms: 0,
            last_pts_ms: 0,
            frame_ms: 0,
            announced: None,
            pass_frames: 0,
            grabbed_image: None,
            sessions: 0,
        };
        match source.connect() {
            Ok(()) => {}
            Err(e) if kind == SourceKind::Live => tracing::warn!(
                error = %e,
                "live source not reachable at start; retrying until it comes up (SIGINT/SIGTERM to stop)"
            ),
            Err(e) => return Err(e),
        }
        Ok(source)
    }

    /// (Re)opens the reader.
    pub fn connect(&mut self) -> Result<(), DetectorError> {
        self.reader = None;
        let uri = self.uri.as_str();
        let live = self.kind == SourceKind::Live;
        let reader = match self.kind {
            SourceKind::Image => {
                let img = imgcodecs::imread(uri, imgcodecs::IMREAD_COLOR).map_err(|e| DetectorError::source(uri, Blame::User, e))?;
                if img.empty() {
                    return Err(DetectorError::source(uri, Blame::User, "not a readable image"));
                }
                Reader::Image(Some(img))
            }
            SourceKind::File | SourceKind::Live => {
                let blame = if live { Blame::External } else { Blame::User };
                let cap = if uri.starts_with("/dev/video") {
                    videoio::VideoCapture::from_file(uri, videoio::CAP_V4L2)
                } else if live {
                    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
                    let params = Vector::from_slice(&[
                        videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
                        ms(self.opts.open_timeout),
                        videoio::CAP_PROP_READ_TIMEOUT_MSEC,
                        ms(self.opts.read_timeout),
                    ]);
                    videoio::VideoCapture::from_file_with_params(uri, videoio::CAP_FFMPEG, &params)
                } else {
                    videoio::VideoCapture::from_file(uri, videoio::CAP_FFMPEG)
                }
                .map_err(|e| DetectorError::source(uri, blame, e))?;
                if !cap.is_opened().unwrap_or(false) {
                    let why = if live {
                        "cannot connect to the stream or device"
                    } else {
                        "OpenCV cannot decode it (corrupt, or not a supported video format)"
                    };
                    return Err(DetectorError::source(uri, blame, why));
                }
                let fps = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
                if !live {
                    let count = cap.get(videoio::CAP_PROP_FRAME_COUNT).unwrap_or(0.0);
                    self.announced = (count >= 1.0).then_some(count as u64);
                    self.pass_frames = 0;
                }
                // Unknown rate: the next pass of a loop starts 1 ms after the last frame.
                self.frame_ms = if fps > 0.0 { (1000.0 / fps).round() as i64 } else { 1 };
                if live {
                    tracing::info!(uri = %common::secret::redact_url(uri), fps, "live source open");
                }
                Reader::Video(cap)
            }
        };
        self.reader = Some(reader);
        self.sessions += 1;
        Ok(())
    }

    /// Which opening of the source this is (1 for the first): a live stream's pts belong to one.
    pub fn session(&self) -> u64 {
        self.sessions
    }

    pub fn is_open(&self) -> bool {
        self.reader.is_some()
    }

    /// Closes the reader (a live source is then reopened).
    pub fn close(&mut self) {
        self.reader = None;
    }

    /// The next frame, or `None` at the end of a file or image, or when a live source has no
    /// frame to give (ended, stalled past the read timeout, or not open; it is closed then).
    /// A file that ends well short of the frames its container announces is an error, not a
    /// clean end.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DetectorError> {
        let read = self.read()?;
        if read.is_none() && self.kind == SourceKind::File {
            if let Some(announced) = self.announced.filter(|a| short_by_too_many(self.pass_frames, *a)) {
                let why =
                    format!("ended after {} of the {announced} frames its container announces: truncated or corrupt", self.pass_frames);
                return Err(DetectorError::source(&self.uri, Blame::User, why));
            }
        }
        let pts_ms = match read {
            Some(read) => read,
            None if self.opts.looped && self.kind == SourceKind::File && self.next_seq > 0 => {
                self.connect()?;
                self.pts_offset_ms = self.last_pts_ms + self.frame_ms;
                tracing::info!(frames_so_far = self.next_seq, "end of file; starting it again (--loop)");
                // A file that yields nothing on a later pass ends the loop rather than spinning.
                let Some(read) = self.read()? else { return Ok(None) };
                read
            }
            None => return Ok(None),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pass_frames += 1;
        self.last_pts_ms = pts_ms;
        Ok(Some(Frame { seq, pts_ms, captured_at: Utc::now() }))
    }

    /// The BGR image of the frame `next_frame` returned last. Skipped frames never come here, so
    /// they cost the codec's decoding but not the conversion.
    pub fn image(&mut self) -> Result<Mat, DetectorError> {
        let blame = if self.kind == SourceKind::Live { Blame::External } else { Blame::User };
        let mat = match &mut self.reader {
            Some(Reader::Video(cap)) => {
                let mut mat = Mat::default();
                let ok = cap.retrieve(&mut mat, 0).map_err(|e| DetectorError::source(&self.uri, blame, e))?;
                ok.then_some(mat).filter(|m| !m.empty())
            }
            Some(Reader::Image(_)) => self.grabbed_image.take(),
            None => None,
        };
        mat.ok_or_else(|| {
            DetectorError::source(&self.uri, blame, format!("frame {} could not be decoded", self.next_seq.saturating_sub(1)))
        })
    }

    /// Takes the next frame from the open reader (decoded, not converted): its pts, with the loop
    /// offset.
    fn read(&mut self) -> Result<Option<i64>, DetectorError> {
        let live = self.kind == SourceKind::Live;
        match &mut self.reader {
            None => Ok(None),
            Some(Reader::Image(img)) => {
                self.grabbed_image = img.take();
                Ok(self.grabbed_image.is_some().then_some(0))
            }
            Some(Reader::Video(cap)) => {
                let blame = if live { Blame::External } else { Blame::User };
                let ok = cap.grab().map_err(|e| DetectorError::source(&self.uri, blame, e))?;
                if !ok {
                    if live {
                        self.reader = None;
                    }
                    return Ok(None);
                }
                let pts = cap.get(videoio::CAP_PROP_POS_MSEC).unwrap_or(0.0);
                Ok(Some(self.pts_offset_ms + pts.round() as i64))
            }
        }
    }
}

/// FFmpeg's transport for RTSP streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RtspTransport {
    /// Interleaved in the RTSP connection: passes firewalls and NAT, loses nothing.
    Tcp,
    /// RTP over UDP: less latency, but packets (so parts of frames) can be lost.
    Udp,
}

/// Chooses FFmpeg's RTSP transport when any of `uris` is an RTSP stream. OpenCV's FFmpeg backend
/// reads its options from OPENCV_FFMPEG_CAPTURE_OPTIONS at every open, so the choice holds for
/// every camera of the process; call this before any thread starts, as changing the environment
/// is not thread-safe. Options the user set there are kept; the flag wins.
pub fn select_rtsp_transport<'a>(mut uris: impl Iterator<Item = &'a str>, transport: RtspTransport) {
    const VAR: &str = "OPENCV_FFMPEG_CAPTURE_OPTIONS";
    let rtsp = |uri: &str| {
        let lower = uri.to_ascii_lowercase();
        lower.starts_with("rtsp://") || lower.starts_with("rtsps://")
    };
    if !uris.any(rtsp) {
        return;
    }
    let transport = match transport {
        RtspTransport::Tcp => "tcp",
        RtspTransport::Udp => "udp",
    };
    // FFmpeg parses "key;value|key;value" in order, so a later key overrides an earlier one: the
    // user's options override the default before them, the flag overrides theirs.
    // FFmpeg waits for 20 frames to estimate a stream's frame rate before an open returns: 2 s of
    // a 10 fps camera, and OpenCV opens one stream at a time in a process, so a host taking over
    // several cameras waited that long for each. A live frame is timed by its arrival, not by the
    // rate: 2 frames are enough for the rate the log shows (an open of a 10 fps stream here: 2.9 s
    // -> 1.1 s, docs/fleet.md).
    const PROBE: &str = "fpsprobesize;2";
    let options = match std::env::var(VAR) {
        Ok(user) if !user.is_empty() => format!("{PROBE}|{user}|rtsp_transport;{transport}"),
        _ => format!("{PROBE}|rtsp_transport;{transport}"),
    };
    std::env::set_var(VAR, options);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: SourceOptions = SourceOptions { looped: false, open_timeout: Duration::from_secs(2), read_timeout: Duration::from_secs(2) };

    #[test]
    fn a_file_short_of_its_announced_frames_is_truncated() {
        assert!(!short_by_too_many(795, 795));
        assert!(!short_by_too_many(793, 795), "within 2 frames: an estimate");
        assert!(short_by_too_many(391, 795));
        assert!(!short_by_too_many(9_950, 10_000), "within 1 %");
        assert!(short_by_too_many(9_890, 10_000));
        assert!(!short_by_too_many(800, 795), "more than announced is no loss");
    }

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
        let err = Source::open("/nonexistent/video.mp4", OPTS).err().unwrap();
        assert_eq!(err.blame(), Blame::User);
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_video_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-video-{}.mp4", std::process::id()));
        std::fs::write(&path, b"this is not a video").unwrap();
        let err = Source::open(path.to_str().unwrap(), OPTS).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("cannot decode"), "{err}");
    }

    #[test]
    fn an_unreachable_camera_is_opened_later_not_refused() {
        // Port 9 (discard) on loopback: nothing listens there.
        let mut src = Source::open("rtsp://127.0.0.1:9/none", OPTS).expect("a live source waits for its camera");
        assert!(src.next_frame().unwrap().is_none());
        let err = src.connect().unwrap_err();
        assert_eq!(err.blame(), Blame::External);
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }

    /// A 3-frame, 10 fps video written with OpenCV into a temp file.
    fn three_frame_video() -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("three-frames-{}.avi", std::process::id()));
        let fourcc = videoio::VideoWriter::fourcc('M', 'J', 'P', 'G').unwrap();
        let size = opencv::core::Size::new(64, 48);
        let mut w = videoio::VideoWriter::new(path.to_str().unwrap(), fourcc, 10.0, size, true).unwrap();
        assert!(w.is_opened().unwrap());
        for i in 0..3 {
            let grey = opencv::core::Scalar::all(f64::from(i * 80));
            w.write(&Mat::new_size_with_default(size, opencv::core::CV_8UC3, grey).unwrap()).unwrap();
        }
        w.release().unwrap();
        path
    }

    #[test]
    fn a_looped_file_keeps_counting_and_its_pts_keep_growing() {
        let path = three_frame_video();
        let read_all = |looped: bool, n: usize| {
            let mut src = Source::open(path.to_str().unwrap(), SourceOptions { looped, ..OPTS }).unwrap();
            (0..n).map_while(|_| src.next_frame().unwrap()).map(|f| (f.seq, f.pts_ms)).collect::<Vec<_>>()
        };
        let once = read_all(false, 10);
        let looped = read_all(true, 8);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(once, [(0, 0), (1, 100), (2, 200)]);
        // The second pass starts one frame period after the last frame of the first.
        assert_eq!(looped, [(0, 0), (1, 100), (2, 200), (3, 300), (4, 400), (5, 500), (6, 600), (7, 700)]);
    }
}
