//! Cameras per box: N live RTSP cameras (720p H.264 at 10 fps, served by `scripts/rtsp_server.py`,
//! each client its own session) in one detector process asking 5 detected frames/s of each
//! (`max_fps = 5`), for each model variant:
//!   cargo bench -p pipeline-tests --bench cameras_per_box [-- --cameras 2,4,6,8 --seconds 20 --variants fp32,int8]
//! Variants: the fp32 model one frame a call, the fp32 batch model with `--max-batch N`
//! (cross-camera batching), the int8 model, and the rectangular int8 model (640x384 inputs for
//! these 16:9 frames) one frame a call and batched. No broker (`--output stdout`): this measures the
//! detector. After a 10 s warm-up from its first message, every published frame's capture-to-output latency (the moment
//! its line arrives here minus its `captured_at`) goes into an HdrHistogram; drops are the
//! detector's own count (`detector_frames_dropped_total`, frames read and kept by `max_fps` that
//! inference could not take in time). Per run one line:
//!   variant= cameras= asked_fps= detected_fps= dropped_pct= p50_ms= p99_ms= max_ms= ok=
//! `ok` is drops under 1 % with p99 under 1 s.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use pipeline_tests::*;

const WARM_UP: Duration = Duration::from_secs(10);
const MAX_FPS: f64 = 5.0;

/// A Prometheus counter summed over its label sets.
fn sum_of(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let counts = flag_list::<u64>(&args, "--cameras", "2,4,6,8")?;
    let seconds = Duration::from_secs(flag_list::<u64>(&args, "--seconds", "20")?[0]);
    let variants = flag_list::<String>(&args, "--variants", "fp32,fp32-batched,int8,rect-int8,rect-int8-batched")?;
    let dir = TempDir::new("cameras")?;
    let clip = dir.join("720p.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(sample("vtest.avi"))
        .args(["-vf", "scale=1280:720", "-r", "10", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p", "-an"])
        .arg(&clip)
        .status()?;
    ensure!(status.success(), "ffmpeg failed");
    let port = free_port()?;
    let _server = start_rtsp_server(&clip, port)?;
    let models = repo_root().join("models");
    for n in counts {
        for variant in &variants {
            let (model, batch) = match variant.as_str() {
                "fp32" => ("yolo11n-pose.onnx", 1),
                "fp32-batched" => ("yolo11n-pose-batch.onnx", n),
                "int8" => ("yolo11n-pose-int8.onnx", 1),
                "rect-int8" => ("yolo11n-pose-rect-int8.onnx", 1),
                "rect-int8-batched" => ("yolo11n-pose-rect-int8.onnx", n),
                other => anyhow::bail!("unknown variant {other}"),
            };
            let model = models.join(model);
            let cameras = dir.join(&format!("cameras-{n}.toml"));
            let toml: String = (0..n)
                .map(|i| format!("[[camera]]\nid = \"cam-{i}\"\nsource = \"rtsp://127.0.0.1:{port}/stream\"\nmax_fps = {MAX_FPS}\n\n"))
                .collect();
            std::fs::write(&cameras, toml)?;
            let metrics = format!("127.0.0.1:{}", free_port()?);
            let detector = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(&cameras).arg("--model").arg(&model).args([
                "--max-batch",
                &batch.to_string(),
                "--output",
                "stdout",
                "--metrics-addr",
                &metrics,
            ]))?;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            // The warm-up starts at the first message: the detector opens its cameras one by one
            // before it starts (about 3 s each over RTSP here), which must not eat the window.
            let mut first: Option<Instant> = None;
            let (mut before, mut published) = (None, 0u64);
            loop {
                let Some(line) = detector.next_line(Duration::from_secs(60))? else { break };
                let now = chrono::Utc::now();
                let since = first.get_or_insert_with(Instant::now).elapsed();
                if since < WARM_UP {
                    continue;
                }
                if since >= WARM_UP + seconds {
                    break;
                }
                // The detector's counts at the end of the warm-up, to take the measured window's.
                if before.is_none() {
                    let body = http_get(&metrics, "/metrics")?;
                    before = Some((sum_of(&body, "detector_frames_dropped_total"), sum_of(&body, "detector_frames_published_total")));
                }
                let msg = wire::FrameMessage::from_json(line.as_bytes())?;
                hist.record((now - msg.captured_at).num_microseconds().unwrap_or(1).max(1) as u64)?;
                published += 1;
            }
            let body = http_get(&metrics, "/metrics")?;
            let (dropped0, published0) = before.context("no frame after the warm-up")?;
            let dropped = sum_of(&body, "detector_frames_dropped_total") - dropped0;
            let counted = sum_of(&body, "detector_frames_published_total") - published0;
            detector.signal("TERM");
            let (status, _, stderr) = detector.finish(Duration::from_secs(60))?;
            ensure!(status.success(), "detector: {stderr}");
            let dropped_pct = 100.0 * dropped / (dropped + counted).max(1.0);
            let p99 = hist.value_at_quantile(0.99) as f64 / 1000.0;
            println!(
                "variant={variant} cameras={n} asked_fps={:.0} detected_fps={:.1} dropped_pct={dropped_pct:.1} p50_ms={:.0} p99_ms={p99:.0} max_ms={:.0} ok={}",
                n as f64 * MAX_FPS,
                published as f64 / seconds.as_secs_f64(),
                hist.value_at_quantile(0.5) as f64 / 1000.0,
                hist.max() as f64 / 1000.0,
                dropped_pct < 1.0 && p99 < 1000.0
            );
        }
    }
    Ok(())
}
