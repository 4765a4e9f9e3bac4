//! Stream identity: the run id every message of a camera carries, so that `(camera_id, run_id,
//! frame_seq)` names one frame for good.
//!
//! A run is one run of one camera's source in one detector process; reconnects and `--loop`
//! passes stay in it. A live source's run is new at every start and sorts by time (UUIDv7): a
//! restarted detector's frames are new frames. A file's (or image's) run is derived from what
//! decides its output, so that processing the same file again with the same settings is the same
//! run (a harmless replay), while another file, another model or other thresholds are another
//! run: a UUIDv8 made of the SHA-256 of the file's content, the model file's SHA-256, the score
//! and IoU thresholds, the classes kept and the detection cap; with `--track`, also the tracker's
//! settings and the camera's `--max-fps`, since a frame's tracks are part of what is stored of it
//! (a file processed without `--track`, then with it, is two runs: the second's frames would
//! otherwise be conflicting replays of the first's, and their tracks never stored). Untracked runs
//! keep the ids they had before tracking existed. The content rather than the path, so that a
//! copied or renamed file is still the same run. A file played with `--realtime` is a camera (its
//! frames are released and dropped by the clock), so its run is new at every start.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Blame, DetectorError};
use crate::source::SourceKind;

/// What decides a file's detections, besides the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings<'a> {
    /// The model file's SHA-256, hex.
    pub model_sha256: &'a str,
    pub conf: f32,
    pub iou: f32,
    /// The class names kept, as the model names them.
    pub classes: Vec<&'a str>,
    pub max_detections: usize,
}

/// What decides a tracked camera's tracks besides its detections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracking {
    /// The camera's `--max-fps`: which frames the tracker sees.
    pub max_fps: f64,
    pub tracker: analytics::Config,
}

impl Tracking {
    /// One line per setting, for a derivation.
    fn described(&self) -> String {
        let buffer = match self.tracker.track_buffer {
            analytics::TrackBuffer::Frames(n) => format!("frames={n}"),
            analytics::TrackBuffer::Seconds(s) => format!("seconds={s}"),
        };
        let analytics::Config { track_high_thresh, track_low_thresh, new_track_thresh, match_thresh, fuse_score, .. } = self.tracker;
        format!(
            "max-fps={}\nbuffer={buffer}\nhigh={track_high_thresh}\nlow={track_low_thresh}\nnew={new_track_thresh}\nmatch={match_thresh}\n\
             fuse-score={fuse_score}\n",
            self.max_fps
        )
    }
}

/// The run of a camera reading `uri`, of this kind, played in real time or not, tracked or not.
pub fn run_of(uri: &str, kind: SourceKind, realtime: bool, settings: &Settings, tracking: Option<Tracking>) -> Result<Uuid, DetectorError> {
    if kind == SourceKind::Live || realtime {
        return Ok(live_run());
    }
    let content = file_sha256(Path::new(uri)).map_err(|e| DetectorError::source(uri, Blame::User, format!("cannot read: {e}")))?;
    Ok(file_run(&content, settings, tracking))
}

/// A live source's run: new now, ordered by time.
pub fn live_run() -> Uuid {
    Uuid::now_v7()
}

/// A file's run, from its content's SHA-256 (hex), the settings and the tracking, if any.
pub fn file_run(content_sha256: &str, settings: &Settings, tracking: Option<Tracking>) -> Uuid {
    let mut classes = settings.classes.clone();
    classes.sort_unstable();
    classes.dedup();
    // One line per input, versioned, so that the derivation can change without reusing ids. The
    // tracking's lines only when tracked, so that an untracked run's id is what it always was.
    let mut described = format!(
        "yolo-pipeline file run v1\ncontent-sha256={content_sha256}\nmodel-sha256={}\nconf={}\niou={}\nclasses={}\nmax-detections={}\n",
        settings.model_sha256,
        settings.conf,
        settings.iou,
        classes.join(","),
        settings.max_detections
    );
    if let Some(t) = tracking {
        described.push_str("tracked\n");
        described.push_str(&t.described());
    }
    let digest = Sha256::digest(described.as_bytes());
    Uuid::new_v8(digest[..16].try_into().expect("16 bytes"))
}

/// A camera's tracker session (`--track`): the tracker's ids start at 1 at each session, so a
/// person is `(camera_id, run_id, session, id)`. A file's session is a UUIDv8 derived from its run
/// alone, which a tracked run derives from everything that decides its tracks: processing the file
/// again is the same session with the same tracks, a replay (a `--realtime` file's run, and so its
/// session, is new at every start). A live source's session is a new UUIDv7 at every start. The
/// version is the session's clock (`wire::Clock::of_session`): a file's frames are timed by pts.
pub fn tracker_session(run: Uuid, live: bool) -> Uuid {
    if live {
        return Uuid::now_v7();
    }
    // v2: v1 also hashed the rate and the tracker's settings, which the run now holds.
    let digest = Sha256::digest(format!("yolo-pipeline tracker session v2\nrun={run}\n").as_bytes());
    Uuid::new_v8(digest[..16].try_into().expect("16 bytes"))
}

/// A file's SHA-256, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings<'static> {
        Settings { model_sha256: "062cd5", conf: 0.25, iou: 0.7, classes: vec!["person"], max_detections: 300 }
    }

    #[test]
    fn a_file_run_is_the_same_for_the_same_file_and_settings_only() {
        let base = file_run("aa", &settings(), None);
        assert_eq!(base, file_run("aa", &settings(), None), "the same file again: the same run");
        assert_eq!(base.get_version_num(), 8);
        let differs = [
            file_run("ab", &settings(), None),
            file_run("aa", &Settings { conf: 0.3, ..settings() }, None),
            file_run("aa", &Settings { iou: 0.5, ..settings() }, None),
            file_run("aa", &Settings { model_sha256: "8d5f3e", ..settings() }, None),
            file_run("aa", &Settings { classes: vec!["person", "dog"], ..settings() }, None),
            file_run("aa", &Settings { max_detections: 100, ..settings() }, None),
        ];
        for (i, other) in differs.iter().enumerate() {
            assert_ne!(*other, base, "case {i}");
        }
        // The order in which classes are given does not decide the output.
        let two = |c| file_run("aa", &Settings { classes: c, ..settings() }, None);
        assert_eq!(two(vec!["dog", "person"]), two(vec!["person", "dog", "dog"]));
    }

    fn tracking(max_fps: f64, tracker: analytics::Config) -> Option<Tracking> {
        Some(Tracking { max_fps, tracker })
    }

    #[test]
    fn tracking_makes_another_run_and_leaves_untracked_runs_as_they_were() {
        // The id this run had before tracking was part of the derivation (worked out apart from
        // this code, from the description's text): stored untracked frames stay the same run.
        let untracked = file_run("aa", &settings(), None);
        assert_eq!(untracked.to_string(), "d1cb52af-8c1e-87d0-b258-c40f7f64779d");
        let tracker = analytics::Config::default();
        let base = file_run("aa", &settings(), tracking(0.0, tracker));
        assert_ne!(base, untracked, "tracked, the same file is another run: its frames carry tracks");
        assert_eq!(base, file_run("aa", &settings(), tracking(0.0, tracker)), "the same file tracked again: the same run");
        assert_eq!(base.get_version_num(), 8);
        let differs = [
            file_run("ab", &settings(), tracking(0.0, tracker)),
            file_run("aa", &Settings { conf: 0.3, ..settings() }, tracking(0.0, tracker)),
            // The rate decides which frames the tracker sees, so the tracks: another run.
            file_run("aa", &settings(), tracking(5.0, tracker)),
            file_run("aa", &settings(), tracking(0.0, analytics::Config { track_buffer: analytics::TrackBuffer::Frames(60), ..tracker })),
            file_run(
                "aa",
                &settings(),
                tracking(0.0, analytics::Config { track_buffer: analytics::TrackBuffer::Seconds(30.0), ..tracker }),
            ),
            file_run("aa", &settings(), tracking(0.0, analytics::Config { match_thresh: 0.7, ..tracker })),
        ];
        for (i, other) in differs.iter().enumerate() {
            assert_ne!(*other, base, "case {i}");
        }
    }

    #[test]
    fn a_files_tracker_session_is_its_runs() {
        let tracked = |content| file_run(content, &settings(), tracking(0.0, analytics::Config::default()));
        let (run, other_run) = (tracked("aa"), tracked("ab"));
        let base = tracker_session(run, false);
        assert_eq!(base, tracker_session(run, false), "the same file again: the same session");
        assert_eq!(base.get_version_num(), 8);
        assert_ne!(base, run, "not the run's own id");
        assert_ne!(base, tracker_session(other_run, false));
        // A live camera's tracker starts a new session every time.
        let (a, b) = (tracker_session(run, true), tracker_session(run, true));
        assert!(a != b && a.get_version_num() == 7, "{a} {b}");
        // A --realtime file's run is new at each start, and so is its session, timed by pts (v8).
        let (a, b) = (tracker_session(live_run(), false), tracker_session(live_run(), false));
        assert!(a != b && a.get_version_num() == 8, "{a} {b}");
    }

    #[test]
    fn live_runs_are_new_and_sort_by_time() {
        let a = live_run();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = live_run();
        assert!(a < b && a.get_version_num() == 7, "{a} {b}");
    }

    #[test]
    fn content_hash() {
        let path = std::env::temp_dir().join(format!("identity-{}.bin", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let h = file_sha256(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
