//! `--track` end to end: the real detector on `vtest.avi` (the default model, `--conf` 0.25, `--iou`
//! 0.7, 640x640) against Ultralytics 8.4.190's `model.track(..., tracker="bytetrack.yaml", conf=0.1,
//! iou=0.7)` on the same ONNX file, recorded by scripts/reference_tracks.sh in
//! tests/reference/tracks/vtest.avi.csv. The tracks are scored by py-motmetrics
//! (scripts/track_metrics.sh; the figures are printed): IDF1 must be at least 0.99. No broker:
//! `--output stdout`. And tracking leaves the detections as they are without it, bit for bit.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pipeline_tests::*;
use wire::FrameMessage;

const IDF1_MIN: f64 = 0.99;
const FRAMES: u64 = 795;

/// The detector's JSON lines on vtest.avi with `extra` flags, checked by the wire's own checks.
fn run_detector(extra: &[&str]) -> Result<(Vec<String>, Vec<FrameMessage>)> {
    let child = Spawned::start(
        Command::new(bin("detector"))
            .arg("--source")
            .arg(sample("vtest.avi"))
            .arg("--model")
            .arg(model())
            .args(["--output", "stdout"])
            .args(extra),
    )?;
    let mut lines = Vec::new();
    while let Some(line) = child.next_line(Duration::from_secs(120))? {
        lines.push(line);
    }
    let (status, rest, stderr) = child.finish(Duration::from_secs(60))?;
    lines.extend(rest);
    ensure!(status.success(), "detector {extra:?} failed: {stderr}");
    let messages = lines.iter().map(|l| FrameMessage::from_json(l.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let seqs: Vec<u64> = messages.iter().map(|m| m.frame_seq).collect();
    ensure!(seqs.iter().copied().eq(0..FRAMES), "{extra:?}: frame_seq not 0..{FRAMES} in order");
    Ok((lines, messages))
}

#[test]
fn tracks_equal_ultralytics_on_vtest_video() -> Result<()> {
    // Both at once: the untracked run is the detections' yardstick.
    let started = Instant::now();
    let untracked = std::thread::spawn(|| run_detector(&[]));
    let (lines, tracked) = run_detector(&["--track"])?;
    let tracked_s = started.elapsed().as_secs_f64();
    let (_, plain) = untracked.join().expect("the untracked run")?;
    eprintln!("tracks: the two detector runs took {:.1} s", started.elapsed().as_secs_f64());

    // The detections are what they are without --track; tracks name them by their index.
    let session = tracked[0].tracker.as_ref().context("a tracked frame carries its tracker")?.session;
    ensure!(session.get_version_num() == 8, "a file's session is derived from its run: {session}");
    let (mut tracks, mut below_conf) = (0, 0);
    for (t, p) in tracked.iter().zip(&plain) {
        ensure!(p.tracker.is_none(), "frame {}: a tracker without --track", p.frame_seq);
        ensure!((t.schema_version, p.schema_version) == (3, 3), "wire v3");
        ensure!(t.detections == p.detections, "frame {}: --track changed the detections", t.frame_seq);
        let tracker = t.tracker.as_ref().with_context(|| format!("frame {}: no tracker", t.frame_seq))?;
        ensure!(tracker.session == session, "frame {}: another session", t.frame_seq);
        for track in &tracker.tracks {
            tracks += 1;
            match track.detection {
                Some(i) => ensure!(t.detections[i].score == track.score, "frame {}: track {} on another detection", t.frame_seq, track.id),
                None => {
                    ensure!(track.score <= 0.25, "frame {}: track {} lost its detection", t.frame_seq, track.id);
                    below_conf += 1;
                }
            }
        }
    }
    eprintln!("tracks: {tracks} tracks in {FRAMES} frames, {below_conf} of them on a detection at or below --conf (not published)");

    let dir = TempDir::new("tracks")?;
    let jsonl = dir.join("vtest.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n")?;
    let reference = repo_root().join("tests/reference/tracks/vtest.avi.csv");
    let out = run(
        Command::new(repo_root().join("scripts/track_metrics.sh")).arg(&reference).arg("vtest.avi").arg(&jsonl),
        Duration::from_secs(600),
    )?;
    ensure!(out.status.success(), "track_metrics.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    eprintln!("tracks vtest.avi against Ultralytics 8.4.190 model.track: {figures}");
    eprintln!("tracks: the tracked run took {tracked_s:.1} s for {FRAMES} frames (beside the untracked one)");
    let idf1 = figures["idf1"].as_f64().context("idf1")?;
    ensure!(figures["reference_tracks"].as_u64() > Some(1000), "the reference has tracks: {figures}");
    ensure!(idf1 >= IDF1_MIN, "IDF1 {idf1:.4} < {IDF1_MIN}: {figures}");
    Ok(())
}
