//! Many cameras in one detector process (`--cameras FILE`), with `--output stdout`: files, an
//! image and a live RTSP stream side by side through one shared inference worker, batched when the
//! model's batch is dynamic.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pipeline_tests::*;
use wire::FrameMessage;

const FINISHED: &str = "detector finished";

fn write_cameras(dir: &TempDir, toml: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("cameras.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// Runs the detector on a cameras file to its end; returns how it exited, the messages by camera
/// in the order they were written, and stderr.
fn run_cameras_to_end(cameras: &std::path::Path, extra: &[&str]) -> Result<(ExitStatus, BTreeMap<String, Vec<FrameMessage>>, String)> {
    // Spawned reads stdout as it comes: a run's messages are more than a pipe holds.
    let det = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(cameras).args(["--output", "stdout"]).args(extra))?;
    let mut by_camera: BTreeMap<String, Vec<FrameMessage>> = BTreeMap::new();
    while let Some(line) = det.next_line(Duration::from_secs(120))? {
        let msg = FrameMessage::from_json(line.as_bytes())?;
        by_camera.entry(msg.camera_id.clone()).or_default().push(msg);
    }
    let (status, rest, stderr) = det.finish(Duration::from_secs(60))?;
    ensure!(rest.is_empty(), "stdout after its end; stderr:\n{stderr}");
    Ok((status, by_camera, stderr))
}

/// As [`run_cameras_to_end`], for a run that must succeed.
fn run_cameras(cameras: &std::path::Path, extra: &[&str]) -> Result<(BTreeMap<String, Vec<FrameMessage>>, String)> {
    let (status, by_camera, stderr) = run_cameras_to_end(cameras, extra)?;
    ensure!(status.success(), "exit {status}; stderr:\n{stderr}");
    Ok((by_camera, stderr))
}

fn seqs(msgs: &[FrameMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.frame_seq).collect()
}

/// Two cameras on the same clip and one on an image: every frame of each, in order, keyed by its
/// own camera; the two clips give the same detections, so no frame went to the wrong camera.
#[test]
fn files_and_an_image_share_one_inference_worker() -> Result<()> {
    let dir = TempDir::new("cameras")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(4))?;
    let frames = ffprobe_frame_count(&clip)?;
    let cameras = write_cameras(
        &dir,
        &format!(
            "[[camera]]\nid = \"left\"\nsource = \"{clip}\"\n\n[[camera]]\nid = \"right\"\nsource = \"{clip}\"\n\n\
             [[camera]]\nid = \"court\"\nsource = \"{img}\"\n",
            clip = clip.display(),
            img = sample("basketball1.png").display()
        ),
    )?;
    let (by_camera, stderr) = run_cameras(&cameras, &["--model", model().to_str().unwrap()])?;
    ensure!(by_camera.len() == 3, "cameras seen: {:?}", by_camera.keys().collect::<Vec<_>>());
    let (left, right, court) = (&by_camera["left"], &by_camera["right"], &by_camera["court"]);
    let all: Vec<u64> = (0..frames).collect();
    assert_eq!(seqs(left), all, "every frame of the clip, in decode order");
    assert_eq!(seqs(right), all);
    assert_eq!(court.len(), 1);
    assert_eq!(court[0].detections.len(), 2, "basketball1.png has its 2 people");
    for (l, r) in left.iter().zip(right) {
        assert_eq!(l.detections, r.detections, "frame {}", l.frame_seq);
        assert_eq!((l.pts_ms, l.frame_width), (r.pts_ms, r.frame_width));
    }
    assert!(left.iter().map(|m| m.detections.len()).sum::<usize>() > frames as usize, "people in the clip");
    // The shipped model's batch is fixed at 1: one run a frame.
    let messages = 2 * frames + 1;
    assert_eq!(log_field(&stderr, FINISHED, "messages"), Some(messages), "{stderr}");
    assert_eq!(log_field(&stderr, FINISHED, "inference_runs"), Some(messages), "{stderr}");
    for camera in ["left", "right", "court"] {
        ensure!(stderr.contains(&format!("camera={camera}")), "a line per camera: {stderr}");
    }
    Ok(())
}

/// With a dynamic-batch model, frames of several cameras run in one call, and each frame's
/// detections are those of running it alone.
#[test]
fn a_dynamic_batch_model_batches_cameras_and_gives_the_same_detections() -> Result<()> {
    let batch_model = repo_root().join("models/yolo11n-pose-batch.onnx");
    let dir = TempDir::new("batch")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let frames = ffprobe_frame_count(&clip)?;
    let entry = |i: usize| format!("[[camera]]\nid = \"cam{i}\"\nsource = \"{}\"\n\n", clip.display());
    let cameras = write_cameras(&dir, &(0..4).map(entry).collect::<String>())?;
    let (batched, stderr) = run_cameras(&cameras, &["--model", batch_model.to_str().unwrap(), "--max-batch", "4"])?;
    ensure!(stderr.contains("dynamic_batch=true"), "{stderr}");
    let messages = log_field(&stderr, FINISHED, "messages").context("messages")?;
    let runs = log_field(&stderr, FINISHED, "inference_runs").context("inference_runs")?;
    assert_eq!(messages, 4 * frames);
    // Four file cameras keep the worker's queues full: nearly every run takes all four.
    assert!(runs * 3 <= messages, "{runs} runs for {messages} frames: batching did not happen");

    // The reference: one camera, the shipped fixed-batch model (the same weights).
    let alone = run_cameras(&write_cameras(&dir, &entry(0))?, &["--model", model().to_str().unwrap()])?.0;
    let reference = &alone["cam0"];
    assert_eq!(reference.len() as u64, frames);
    for (id, msgs) in &batched {
        assert_eq!(seqs(msgs), seqs(reference), "{id}");
        for (b, r) in msgs.iter().zip(reference) {
            assert_eq!(b.detections.len(), r.detections.len(), "{id} frame {}", b.frame_seq);
            for (bd, rd) in b.detections.iter().zip(&r.detections) {
                // Same weights and arithmetic; a batched kernel may round differently.
                let (bb, rb) = (&bd.bbox, &rd.bbox);
                let off = [bb.x1 - rb.x1, bb.y1 - rb.y1, bb.x2 - rb.x2, bb.y2 - rb.y2].iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(off < 0.05 && (bd.score - rd.score).abs() < 1e-3, "{id} frame {}: {bd:?} vs {rd:?}", b.frame_seq);
            }
        }
    }
    Ok(())
}

/// A live RTSP camera beside a file: the file is read to its end while the stream goes on, and
/// SIGTERM ends both cleanly.
#[test]
fn a_live_camera_and_a_file_in_one_process() -> Result<()> {
    let dir = TempDir::new("mixed")?;
    let mp4 = dir.join("vtest.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(2))?;
    let frames = ffprobe_frame_count(&clip)?;
    let cameras = write_cameras(
        &dir,
        &format!(
            "[[camera]]\nid = \"street\"\nsource = \"rtsp://127.0.0.1:{port}/stream\"\nmax_fps = 5\n\n\
             [[camera]]\nid = \"archive\"\nsource = \"{}\"\n",
            clip.display()
        ),
    )?;
    let det = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(&cameras).args([
        "--model",
        model().to_str().unwrap(),
        "--output",
        "stdout",
    ]))?;
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // Until the file is done and the stream has given some frames after it.
    while counts.get("archive").map_or(0, Vec::len) < frames as usize || counts.get("street").map_or(0, Vec::len) < 10 {
        let line = det.next_line(Duration::from_secs(60))?.context("stdout closed early")?;
        let msg = FrameMessage::from_json(line.as_bytes())?;
        counts.entry(msg.camera_id).or_default().push(msg.frame_seq);
    }
    det.signal("TERM");
    let (status, rest, stderr) = det.finish(Duration::from_secs(60))?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(!stderr.contains("panicked") && !stderr.lines().any(|l| l.contains(" ERROR ")), "{stderr}");
    for line in rest {
        let msg = FrameMessage::from_json(line.as_bytes())?;
        counts.entry(msg.camera_id).or_default().push(msg.frame_seq);
    }
    assert_eq!(counts["archive"], (0..frames).collect::<Vec<_>>(), "the file loses nothing");
    let street = &counts["street"];
    assert!(street.windows(2).all(|w| w[0] < w[1]), "live frames in order: {street:?}");
    // --max-fps 5 on a 10 fps stream, per camera: the stream skips frames, the file none.
    let finished =
        |id: &str| stderr.lines().find(|l| l.contains("camera finished") && l.contains(&format!("camera={id} "))).map(str::to_string);
    let skipped = |id: &str| finished(id).and_then(|l| log_field(&l, "camera finished", "skipped"));
    ensure!(skipped("street").is_some_and(|n| n > 0), "{stderr}");
    ensure!(skipped("archive") == Some(0), "{stderr}");
    Ok(())
}

/// One camera's faults stay its own: beside a good clip, a video file cut short (its container
/// still announces every frame) and an image too thin to letterbox each fail, with one ERROR line
/// naming the camera and the fault, while the good clip is read to its end. The exit code says a
/// camera failed.
#[test]
fn a_cameras_fault_stops_that_camera_only() -> Result<()> {
    let dir = TempDir::new("faults")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let frames = ffprobe_frame_count(&clip)?;
    // The first half of vtest.avi: its header still says 795 frames.
    let cut = dir.join("cut.avi");
    let bytes = std::fs::read(sample("vtest.avi"))?;
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    // 4000 x 2: letterboxed to 640 wide it is 0 pixels high.
    let thin = dir.join("thin.png");
    let out = run(
        Command::new("ffmpeg").args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=4000x2", "-frames:v", "1"]).arg(&thin),
        Duration::from_secs(60),
    )?;
    ensure!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    let cameras = write_cameras(
        &dir,
        &format!(
            "[[camera]]\nid = \"good\"\nsource = \"{}\"\n\n[[camera]]\nid = \"cut\"\nsource = \"{}\"\n\n[[camera]]\nid = \"thin\"\nsource = \"{}\"\n",
            clip.display(),
            cut.display(),
            thin.display()
        ),
    )?;
    let det = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(&cameras).args([
        "--output",
        "stdout",
        "--model",
        model().to_str().unwrap(),
    ]))?;
    let mut by_camera: BTreeMap<String, Vec<FrameMessage>> = BTreeMap::new();
    while let Some(line) = det.next_line(Duration::from_secs(120))? {
        let msg = FrameMessage::from_json(line.as_bytes())?;
        by_camera.entry(msg.camera_id.clone()).or_default().push(msg);
    }
    let (status, _, stderr) = det.finish(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(2), "a camera's input was bad:\n{stderr}");
    assert_eq!(seqs(&by_camera["good"]), (0..frames).collect::<Vec<_>>(), "the good clip, whole:\n{stderr}");
    let cut_frames = by_camera.get("cut").map_or(0, Vec::len) as u64;
    assert!(cut_frames > 300 && cut_frames < 795, "what the cut file holds: {cut_frames}");
    assert!(!by_camera.contains_key("thin"));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 2, "one line per failed camera:\n{stderr}");
    assert!(errors.iter().any(|l| l.contains("camera=\"cut\"") || l.contains("camera=cut")), "{stderr}");
    let cut_line = errors.iter().find(|l| l.contains("cut.avi")).expect("the cut file's error");
    assert!(cut_line.contains("of the 795 frames its container announces: truncated or corrupt"), "{cut_line}");
    let thin_line = errors.iter().find(|l| l.contains("thin.png")).expect("the thin image's error");
    assert!(thin_line.contains("4000x2"), "{thin_line}");
    assert!(stderr.contains("outcome=\"ended\"") || stderr.contains("outcome=ended"), "{stderr}");
    assert_eq!(stderr.matches("outcome=\"failed\"").count() + stderr.matches("outcome=failed").count(), 2, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// `clip`'s first `seconds` of `src` as H.264, scaled to 640x360 (16:9).
fn wide_clip(src: &std::path::Path, clip: &std::path::Path, seconds: u32) -> Result<()> {
    let out = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(src)
            .args(["-t", &seconds.to_string(), "-vf", "scale=640:360", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10"])
            .args(["-pix_fmt", "yuv420p", "-an"])
            .arg(clip),
        Duration::from_secs(120),
    )?;
    ensure!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Whether a log line names the camera (as a string field, quoted, or a displayed one).
fn names_camera(line: &str, id: &str) -> bool {
    line.contains(&format!("camera=\"{id}\"")) || line.contains(&format!("camera={id} "))
}

/// `tests/models/four-thirds-only.onnx` (dynamic batch, height and width; scripts/make_test_models.py):
/// one person in every 4:3 frame, and an ONNX Runtime error on any other input, a 16:9 frame
/// (640x384) or a batch of two frames alike.
fn four_thirds_only() -> String {
    repo_root().join("tests/models/four-thirds-only.onnx").to_str().unwrap().to_string()
}

/// One camera's inference errors stay its own: beside two 4:3 clips, a 16:9 clip whose frames
/// the model cannot run fails with one ERROR line naming the camera and ONNX Runtime's error, while
/// the 4:3 clips are read whole, though their frames, batched together, failed too until each ran
/// alone. The exit code says a camera failed.
#[test]
fn an_inference_error_stops_that_camera_only() -> Result<()> {
    let dir = TempDir::new("inferfault")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(2))?;
    let frames = ffprobe_frame_count(&clip)?;
    let wide = dir.join("wide.mp4");
    wide_clip(&sample("vtest.avi"), &wide, 2)?;
    let cameras = write_cameras(
        &dir,
        &format!(
            "[[camera]]\nid = \"left\"\nsource = \"{clip}\"\n\n[[camera]]\nid = \"wide\"\nsource = \"{wide}\"\n\n\
             [[camera]]\nid = \"right\"\nsource = \"{clip}\"\n",
            clip = clip.display(),
            wide = wide.display()
        ),
    )?;
    let (status, by_camera, stderr) = run_cameras_to_end(&cameras, &["--model", &four_thirds_only(), "--max-batch", "4"])?;
    assert_eq!(status.code(), Some(2), "the model cannot run a camera's frames:\n{stderr}");
    for id in ["left", "right"] {
        let msgs = by_camera.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(seqs(msgs), (0..frames).collect::<Vec<_>>(), "{id}, whole:\n{stderr}");
        assert!(msgs.iter().all(|m| m.detections.len() == 1), "{id}: the model's one person a frame");
    }
    assert!(!by_camera.contains_key("wide"), "no frame of the wide camera ran:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ") && l.contains("camera=")).collect();
    assert_eq!(errors.len(), 1, "one line for the failed camera:\n{stderr}");
    assert!(names_camera(errors[0], "wide") && errors[0].contains("640x384") && errors[0].contains("Reshape"), "{}", errors[0]);
    let finished = |id: &str| stderr.lines().find(|l| l.contains("camera finished") && l.contains(&format!("camera={id} "))).unwrap_or("");
    assert!(finished("wide").contains("outcome=\"failed\"") || finished("wide").contains("outcome=failed"), "{stderr}");
    assert!(finished("left").contains("outcome=\"ended\"") || finished("left").contains("outcome=ended"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// A live camera whose frames the model cannot run drops them (counted), and after a few in a
/// row is reopened like a camera with a fault of its own, while a file beside it is read whole
/// and SIGTERM ends the run cleanly.
#[test]
fn a_live_cameras_inference_errors_reopen_it_and_spare_the_others() -> Result<()> {
    let dir = TempDir::new("inferlive")?;
    let wide = dir.join("wide.mp4");
    wide_clip(&sample("vtest.avi"), &wide, 30)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&wide, port)?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(2))?;
    let frames = ffprobe_frame_count(&clip)?;
    let cameras = write_cameras(
        &dir,
        &format!(
            "[[camera]]\nid = \"street\"\nsource = \"rtsp://127.0.0.1:{port}/stream\"\n\n[[camera]]\nid = \"archive\"\nsource = \"{}\"\n",
            clip.display()
        ),
    )?;
    let det = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(&cameras).args([
        "--model",
        &four_thirds_only(),
        "--output",
        "stdout",
    ]))?;
    let mut archive = Vec::new();
    while archive.len() < frames as usize {
        let line = det.next_line(Duration::from_secs(120))?.context("stdout closed early")?;
        let msg = FrameMessage::from_json(line.as_bytes())?;
        ensure!(msg.camera_id == "archive", "a frame of the street camera ran: {line}");
        archive.push(msg.frame_seq);
    }
    det.wait_stderr("the street camera reopened twice", Duration::from_secs(120), |e| {
        e.lines().filter(|l| names_camera(l, "street") && l.contains(" ERROR ") && l.contains("reopening")).count() >= 2
    })?;
    det.signal("TERM");
    let (status, rest, stderr) = det.finish(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(0), "a live camera's faults end nothing:\n{stderr}");
    assert!(rest.iter().all(|l| !l.contains("\"street\"")), "{rest:?}");
    assert_eq!(archive, (0..frames).collect::<Vec<_>>(), "the file loses nothing");
    let street = stderr.lines().find(|l| l.contains("camera finished") && l.contains("camera=street ")).context("street's line")?;
    let (read, dropped) = (log_field(street, "camera finished", "frames"), log_field(street, "camera finished", "dropped"));
    assert!(read.is_some_and(|r| r > 0) && dropped == read, "every frame read was dropped: {street}");
    assert!(log_field(street, "camera finished", "errors").is_some_and(|e| e >= 2), "{street}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}
