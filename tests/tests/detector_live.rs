//! The detector on live and live-like sources, with `--output stdout` (no broker): an RTSP stream
//! from a real RTSP server (scripts/rtsp_server.py) that goes away and comes back, a camera that is
//! not there at start, and files with --max-fps, --realtime and --loop.
//!
//! No assertion here is about wall time; every wait is bounded so a test cannot hang, and every
//! child process is killed when its handle drops, whichever way the test ends.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;
use wire::FrameMessage;

const LOST: &str = "live source unavailable";
const FINISHED: &str = "detector finished";

fn detector(source: &str, extra: &[&str]) -> Result<Spawned> {
    Spawned::start(
        Command::new(bin("detector")).args(["--source", source, "--model", model().to_str().unwrap(), "--output", "stdout"]).args(extra),
    )
}

fn parse(lines: &[String]) -> Result<Vec<FrameMessage>> {
    lines.iter().map(|l| Ok(FrameMessage::from_json(l.as_bytes())?)).collect()
}

/// Reads stdout until `n` messages in all have come.
fn read_until(det: &Spawned, lines: &mut Vec<String>, n: usize) -> Result<()> {
    while lines.len() < n {
        match det.next_line(Duration::from_secs(60))? {
            Some(line) => lines.push(line),
            None => anyhow::bail!("stdout closed after {} lines; stderr:\n{}", lines.len(), det.stderr()),
        }
    }
    Ok(())
}

/// SIGTERM, then: exit code 0, no panic, no error, and every message line.
fn stop_cleanly(det: Spawned, mut lines: Vec<String>) -> Result<(Vec<FrameMessage>, String)> {
    det.signal("TERM");
    let (status, rest, stderr) = det.finish(Duration::from_secs(60))?;
    lines.extend(rest);
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(!stderr.contains("panicked"), "{stderr}");
    ensure!(!stderr.lines().any(|l| l.contains(" ERROR ")), "{stderr}");
    ensure!(stderr.contains(FINISHED), "{stderr}");
    Ok((parse(&lines)?, stderr))
}

fn strictly_increasing(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn rtsp_stream_survives_a_server_restart() -> Result<()> {
    let dir = TempDir::new("live")?;
    let mp4 = dir.join("vtest.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let server = start_rtsp_server(&mp4, port)?;
    let url = format!("rtsp://127.0.0.1:{port}/stream");
    let det = detector(&url, &["--camera-id", "door"])?;

    let mut lines = Vec::new();
    read_until(&det, &mut lines, 10)?;
    drop(server); // SIGKILL: the camera is gone without a goodbye
                  // The detector notices and keeps trying while nothing listens.
    det.wait_stderr("two reconnect attempts", Duration::from_secs(60), |e| e.matches(LOST).count() >= 2)?;
    let _server = start_rtsp_server(&mp4, port)?;
    det.wait_stderr("the reopened stream", Duration::from_secs(120), |e| e.contains("live source reopened"))?;
    let reopened_at = lines.len();
    read_until(&det, &mut lines, reopened_at + 10)?;
    let (msgs, stderr) = stop_cleanly(det, lines)?;

    assert!(msgs.iter().all(|m| m.camera_id == "door" && (m.frame_width, m.frame_height) == (768, 576)));
    assert_resumed(&msgs, &stderr);
    Ok(())
}

/// Frames from before and after a reopen were published: the new session plays the file from its
/// start, so pts go back while frame_seq keeps increasing. Each reopen attempt was one WARN line
/// with its number and delay, and all of them are counted in the summary.
fn assert_resumed(msgs: &[FrameMessage], stderr: &str) {
    let seqs: Vec<u64> = msgs.iter().map(|m| m.frame_seq).collect();
    assert!(strictly_increasing(&seqs), "frame_seq must keep increasing across the outage: {seqs:?}");
    let restart = msgs.windows(2).position(|w| w[1].pts_ms < w[0].pts_ms);
    let restart = restart.unwrap_or_else(|| panic!("no pts restart in {:?}", msgs.iter().map(|m| m.pts_ms).collect::<Vec<_>>()));
    assert!(msgs.len() - (restart + 1) >= 5, "few frames after the restart: {}", msgs.len() - (restart + 1));
    let attempts: Vec<&str> = stderr.lines().filter(|l| l.contains(LOST)).collect();
    assert!(!attempts.is_empty(), "{stderr}");
    // One outage: its attempts are numbered 1, 2, 3, ...
    for (i, line) in attempts.iter().enumerate() {
        assert!(line.contains(" WARN ") && line.contains(&format!("attempt={} ", i + 1)) && line.contains("delay_ms="), "{line}");
    }
    assert_eq!(log_field(stderr, FINISHED, "reconnects"), Some(attempts.len() as u64), "{stderr}");
}

#[test]
fn a_stalled_stream_is_reopened_after_the_read_timeout() -> Result<()> {
    let dir = TempDir::new("live")?;
    let mp4 = dir.join("vtest.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let server = start_rtsp_server(&mp4, port)?;
    let det = detector(&format!("rtsp://127.0.0.1:{port}/stream"), &["--read-timeout-s", "2"])?;
    let mut lines = Vec::new();
    read_until(&det, &mut lines, 10)?;
    // SIGSTOP: the connection stays up, but nothing comes any more.
    server.signal("STOP");
    let stalled = det.wait_stderr("the stall", Duration::from_secs(60), |e| e.contains("reason=no frame"));
    server.signal("CONT");
    stalled?;
    det.wait_stderr("the reopened stream", Duration::from_secs(120), |e| e.contains("live source reopened"))?;
    let reopened_at = lines.len();
    read_until(&det, &mut lines, reopened_at + 10)?;
    let (msgs, stderr) = stop_cleanly(det, lines)?;
    assert_resumed(&msgs, &stderr);
    Ok(())
}

#[test]
fn a_camera_that_comes_up_later_is_picked_up() -> Result<()> {
    let dir = TempDir::new("live")?;
    let mp4 = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, Some(20))?;
    let port = free_port()?;
    let det = detector(&format!("rtsp://127.0.0.1:{port}/stream"), &[])?;
    det.wait_stderr("retries of the absent camera", Duration::from_secs(60), |e| {
        e.contains("not reachable at start") && e.matches(LOST).count() >= 2
    })?;
    let _server = start_rtsp_server(&mp4, port)?;
    let mut lines = Vec::new();
    read_until(&det, &mut lines, 5)?;
    let (msgs, stderr) = stop_cleanly(det, lines)?;
    assert!(msgs.len() >= 5 && strictly_increasing(&msgs.iter().map(|m| m.frame_seq).collect::<Vec<_>>()));
    assert!(log_field(&stderr, FINISHED, "reconnects") >= Some(2), "{stderr}");
    Ok(())
}

#[test]
fn sigterm_while_waiting_to_reconnect_stops_without_another_attempt() -> Result<()> {
    let port = free_port()?;
    let det = detector(&format!("rtsp://127.0.0.1:{port}/stream"), &[])?;
    // Attempt 4 waits 4 s +-20% before it opens: the signal comes in that wait.
    det.wait_stderr("attempt 4", Duration::from_secs(60), |e| e.contains("attempt=4 "))?;
    let (msgs, stderr) = stop_cleanly(det, Vec::new())?;
    assert!(msgs.is_empty());
    assert_eq!(stderr.matches(LOST).count(), 4, "no attempt after the signal:\n{stderr}");
    assert_eq!(log_field(&stderr, FINISHED, "reconnects"), Some(4), "{stderr}");
    Ok(())
}

/// Runs the detector on a file to its end; its messages and stderr.
fn run_file(source: &str, extra: &[&str]) -> Result<(Vec<FrameMessage>, String)> {
    let det = detector(source, extra)?;
    let (status, lines, stderr) = det.finish(Duration::from_secs(300))?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(!stderr.contains("panicked"), "{stderr}");
    Ok((parse(&lines)?, stderr))
}

#[test]
fn max_fps_keeps_a_files_frames_by_pts() -> Result<()> {
    let video = sample("vtest.avi");
    let frames = ffprobe_frame_count(&video)?;
    let (msgs, stderr) = run_file(video.to_str().unwrap(), &["--max-fps", "2"])?;
    // 10 fps capped at 2: the frames at pts 0, 500, 1000, ... ms, i.e. every fifth, and files
    // drop nothing, so the gaps in frame_seq are exactly the skipped frames.
    let expected: Vec<u64> = (0..frames).step_by(5).collect();
    assert_eq!(msgs.iter().map(|m| m.frame_seq).collect::<Vec<_>>(), expected);
    assert!(msgs.iter().all(|m| m.pts_ms == m.frame_seq as i64 * 100), "pts are the kept frames' own");
    assert_eq!(log_field(&stderr, FINISHED, "frames"), Some(frames), "{stderr}");
    assert_eq!(log_field(&stderr, FINISHED, "skipped"), Some(frames - expected.len() as u64), "{stderr}");
    assert_eq!(log_field(&stderr, FINISHED, "dropped"), Some(0), "{stderr}");
    Ok(())
}

#[test]
fn realtime_file_with_max_fps_is_paced_like_a_camera() -> Result<()> {
    let dir = TempDir::new("live")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let frames = ffprobe_frame_count(&clip)?;
    let (msgs, stderr) = run_file(clip.to_str().unwrap(), &["--realtime", "--max-fps", "2"])?;
    // The same frames are kept as without --realtime (pts decide, not the clock). Real time may
    // drop a kept frame if inference falls behind, so what was kept is published or dropped.
    let kept = frames.div_ceil(5);
    let seqs: Vec<u64> = msgs.iter().map(|m| m.frame_seq).collect();
    assert!(!seqs.is_empty() && strictly_increasing(&seqs) && seqs.iter().all(|s| s % 5 == 0), "{seqs:?}");
    assert_eq!(log_field(&stderr, FINISHED, "frames"), Some(frames), "{stderr}");
    assert_eq!(log_field(&stderr, FINISHED, "skipped"), Some(frames - kept), "{stderr}");
    let dropped = log_field(&stderr, FINISHED, "dropped").expect("dropped count");
    assert_eq!(msgs.len() as u64 + dropped, kept, "{stderr}");
    Ok(())
}

#[test]
fn a_looped_file_keeps_counting_until_sigterm() -> Result<()> {
    let dir = TempDir::new("live")?;
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let frames = ffprobe_frame_count(&clip)? as usize;
    let det = detector(clip.to_str().unwrap(), &["--loop"])?;
    let mut lines = Vec::new();
    read_until(&det, &mut lines, 2 * frames + 5)?;
    let (msgs, stderr) = stop_cleanly(det, lines)?;
    // A looped file is still a file: nothing skipped or dropped, frame_seq without gaps, and pts
    // that keep growing from one pass to the next.
    assert!(msgs.len() > 2 * frames);
    assert!(msgs.iter().enumerate().all(|(i, m)| m.frame_seq == i as u64), "frame_seq must run 0, 1, 2, ...");
    assert!(msgs.windows(2).all(|w| w[0].pts_ms < w[1].pts_ms), "{:?}", msgs.iter().map(|m| m.pts_ms).collect::<Vec<_>>());
    assert!(stderr.matches("starting it again (--loop)").count() >= 2, "{stderr}");
    Ok(())
}

/// How late each message's frame came against its stream's own clock, as the detector stamped
/// it: (captured_at - pts) minus the least of it so far in the stream's session (a session's pts
/// only grow; a reopened stream starts them again), in seconds.
fn lags_s(msgs: &[FrameMessage]) -> Vec<f64> {
    let (mut base, mut last_pts) = (f64::INFINITY, i64::MIN);
    msgs.iter()
        .map(|m| {
            if m.pts_ms < last_pts {
                base = f64::INFINITY;
            }
            last_pts = m.pts_ms;
            let lag = (m.captured_at.timestamp_millis() - m.pts_ms) as f64;
            base = base.min(lag);
            (lag - base) / 1000.0
        })
        .collect()
}

/// A labelled series' value in a Prometheus text body: the first line of `name{...}` whose labels
/// contain every one of `labels`.
fn series(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A stream faster than this box decodes (4K at 90 fps, every frame converted and letterboxed
/// while inference takes the cores): its frames come ever later than the stream's own clock. The
/// detector must not stamp them "now": it tracks each live camera's drift behind its stream,
/// exports it, drops frames further behind than --max-frame-age-s as stale, and reopens the
/// stream when that lasts.
#[test]
fn a_decoder_that_falls_behind_does_not_stamp_old_frames_now() -> Result<()> {
    let dir = TempDir::new("drift")?;
    let clip = dir.join("uhd.mp4");
    let out = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=90", "-t", "4"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p"])
            .arg(&clip),
        Duration::from_secs(300),
    )?;
    ensure!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port()?;
    let _server = start_rtsp_server(&clip, port)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let det = detector(&format!("rtsp://127.0.0.1:{port}/stream"), &["--max-frame-age-s", "1", "--metrics-addr", &addr])?;
    // The clip played to its end once: the stream ends there and is opened again.
    det.wait_stderr("the clip's end", Duration::from_secs(180), |e| e.contains(LOST))?;
    let metrics = http_get(&addr, "/metrics")?;
    let (msgs, _) = stop_cleanly(det, Vec::new())?;
    let lags = lags_s(&msgs);
    let worst = lags.iter().copied().fold(0.0, f64::max);
    println!("published {} frames; the latest came {worst:.2} s behind its stream", msgs.len());
    assert!(worst <= 1.5, "a frame published {worst:.2} s behind its stream, stamped as if captured when grabbed");
    let stale = series(&metrics, "detector_frames_dropped_total", &["camera=\"cam0\"", "reason=\"stale\""]);
    assert!(stale.is_some_and(|n| n > 0.0), "frames too far behind are dropped as stale: {stale:?}\n{metrics}");
    assert!(series(&metrics, "detector_stream_drift_seconds", &["camera=\"cam0\""]).is_some(), "{metrics}");

    // With a bound this decoder cannot get back within by dropping frames, the drift lasts, and
    // the stream is reopened to skip its backlog.
    let det = detector(&format!("rtsp://127.0.0.1:{port}/stream"), &["--max-frame-age-s", "0.2"])?;
    det.wait_stderr("a reopen for the drift", Duration::from_secs(120), |e| {
        e.split_once("reopening it to skip the backlog").is_some_and(|(_, after)| after.contains("live source reopened"))
    })?;
    let (_, stderr) = stop_cleanly(det, Vec::new())?;
    assert!(log_field(&stderr, FINISHED, "reconnects") >= Some(1), "{stderr}");
    Ok(())
}
