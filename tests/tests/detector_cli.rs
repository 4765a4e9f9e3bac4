//! The detector binary on still images and bad inputs, with `--output stdout` (no broker needed
//! except where the broker is the point).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;
use wire::FrameMessage;

fn detector(args: &[&str]) -> Result<std::process::Output> {
    run(Command::new(bin("detector")).args(args), Duration::from_secs(120))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn basketball_image_has_two_people() -> Result<()> {
    let img = sample("basketball1.png");
    let out = detector(&["--source", img.to_str().unwrap(), "--model", model().to_str().unwrap(), "--output", "stdout"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
    assert_eq!(lines.len(), 1, "one message for one image");
    let msg = FrameMessage::from_json(lines[0].as_bytes())?;
    assert_eq!((msg.frame_seq, msg.frame_width, msg.frame_height), (0, 640, 480));
    assert_eq!(msg.detections.len(), 2, "{:?}", msg.detections);
    for d in &msg.detections {
        assert_eq!(d.class, "person");
        assert!(d.score > 0.5, "{d:?}");
        assert_eq!(d.keypoints.as_ref().map(Vec::len), Some(17));
        // Boxes are in source pixels, inside the 640x480 frame.
        assert!(d.bbox.x1 >= 0.0 && d.bbox.x2 <= 640.0 && d.bbox.y1 >= 0.0 && d.bbox.y2 <= 480.0, "{d:?}");
    }
    // The two players stand apart: left and right halves of the frame.
    let mut centres: Vec<f32> = msg.detections.iter().map(|d| (d.bbox.x1 + d.bbox.x2) / 2.0).collect();
    centres.sort_by(f32::total_cmp);
    assert!(centres[0] < 320.0 && centres[1] > 320.0, "{centres:?}");
    Ok(())
}

/// Each bad input: one clear error line naming the problem, a non-zero exit, no panic.
fn assert_clean_failure(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("ERROR")).count(), 1, "{err}");
}

#[test]
fn missing_video_file() -> Result<()> {
    let out = detector(&["--source", "/nonexistent/cam.mp4", "--model", model().to_str().unwrap(), "--output", "stdout"])?;
    assert_clean_failure(&out, 2, "no such file");
    Ok(())
}

#[test]
fn corrupt_model() -> Result<()> {
    let bad = std::env::temp_dir().join(unique("bad-model") + ".onnx");
    std::fs::write(&bad, b"definitely not protobuf")?;
    let img = sample("basketball1.png");
    let out = detector(&["--source", img.to_str().unwrap(), "--model", bad.to_str().unwrap(), "--output", "stdout"])?;
    std::fs::remove_file(&bad)?;
    assert_clean_failure(&out, 2, "not a loadable ONNX model");
    Ok(())
}

#[test]
fn missing_model() -> Result<()> {
    let img = sample("basketball1.png");
    let out = detector(&["--source", img.to_str().unwrap(), "--model", "/nonexistent/m.onnx", "--output", "stdout"])?;
    assert_clean_failure(&out, 2, "cannot read");
    Ok(())
}

#[test]
fn unreachable_broker() -> Result<()> {
    let img = sample("basketball1.png");
    // Port 9 (discard) on loopback: nothing listens there.
    let out = detector(&["--source", img.to_str().unwrap(), "--model", model().to_str().unwrap(), "--brokers", "127.0.0.1:9"])?;
    assert_clean_failure(&out, 3, "cannot reach the brokers at 127.0.0.1:9");
    Ok(())
}

#[test]
fn bad_flag_value() -> Result<()> {
    let out = detector(&["--source", "x.mp4", "--conf", "7"])?;
    assert_clean_failure(&out, 2, "--conf must be within 0 and 1");
    Ok(())
}

#[test]
fn loop_on_a_live_source_is_refused() -> Result<()> {
    let out = detector(&["--source", "rtsp://127.0.0.1:9/stream", "--loop", "--output", "stdout"])?;
    assert_clean_failure(&out, 2, "--loop and --realtime (loop, realtime) apply to video files only");
    Ok(())
}

#[test]
fn snapshot_of_a_frame_with_people() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("snapshots"));
    let img = sample("basketball1.png");
    let out = detector(&[
        "--source",
        img.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--output",
        "stdout",
        "--camera-id",
        "court 1",
        "--snapshot-dir",
        dir.to_str().unwrap(),
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let msg = FrameMessage::from_json(std::str::from_utf8(&out.stdout)?.lines().next().unwrap().as_bytes())?;
    let files: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name(), "court_1-00000000.jpg");
    let snap = image::open(files[0].path())?.to_rgb8();
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(snap.dimensions(), (640, 480));
    // Each person's box is drawn in green (within JPEG's tolerance) on its left edge.
    for d in &msg.detections {
        let (x, y) = ((d.bbox.x1 + 0.5).round() as u32, ((d.bbox.y1 + d.bbox.y2) / 2.0) as u32);
        let p = snap.get_pixel(x, y);
        assert!(p[1] > 180 && p[0] < 120 && p[2] < 120, "pixel {p:?} at ({x}, {y}) for {:?}", d.bbox);
    }
    Ok(())
}

#[test]
fn bad_cameras_file() -> Result<()> {
    let dir = TempDir::new("bad-cameras")?;
    let path = dir.join("cameras.toml");
    std::fs::write(&path, "[[camera]]\nid = \"door\"\nsource = \"door.mp4\"\nmax_fsp = 5\n")?;
    let out = detector(&["--cameras", path.to_str().unwrap(), "--output", "stdout"])?;
    assert_clean_failure(&out, 2, "line 4: unknown field `max_fsp`");
    // A listed file that is not there fails the whole run at start, naming it.
    std::fs::write(&path, "[[camera]]\nid = \"door\"\nsource = \"/nonexistent/door.mp4\"\n")?;
    let out = detector(&["--cameras", path.to_str().unwrap(), "--model", model().to_str().unwrap(), "--output", "stdout"])?;
    assert_clean_failure(&out, 2, "source /nonexistent/door.mp4: no such file");
    Ok(())
}
