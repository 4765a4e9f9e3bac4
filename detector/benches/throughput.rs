//! Detector throughput against bare ONNX Runtime, in one run, with the same model and threads:
//!   cargo bench -p detector --bench throughput [-- VIDEO [MODEL [ROUNDS]]]
//! Two measurements, alternated:
//! - Bare inference: the model alone on letterboxed frames of the video (40 distinct frames,
//!   cycled), after a warm-up, as many runs as the video has frames.
//! - The detector binary on the whole video with `--output stdout`, from process start to exit
//!   (so model loading and video opening count against it), messages counted on its stdout.
//!
//! Bare, then ROUNDS (default 3) times detector + bare; each round's ort_fps is the mean of the
//! bare rates just before and after its detector run. Last line, from the round with the median
//! ratio: `detector_fps=<f> ort_fps=<f> ratio=<f>`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use detector::infer::Model;
use detector::preprocess::letterbox;
use detector::source::{Source, SourceOptions};

mod support;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // cargo bench passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let video = args.first().map(PathBuf::from).unwrap_or_else(|| root.join("samples/vtest.avi"));
    let model_path = args.get(1).map(PathBuf::from).unwrap_or_else(|| root.join("models/yolo11n-pose.onnx"));
    let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(3);
    let threads = std::thread::available_parallelism()?.get();

    // Bare ONNX Runtime on real frames.
    let mut model = Model::load(&model_path, threads)?;
    let opts = SourceOptions { looped: false, open_timeout: Duration::from_secs(20), read_timeout: Duration::from_secs(10) };
    let mut source = Source::open(video.to_str().ok_or("path")?, opts)?;
    let mut inputs = Vec::new();
    let mut frames = 0usize;
    while source.next_frame()?.is_some() {
        if inputs.len() < 40 {
            let mut t = Vec::new();
            let lb = letterbox(&source.image()?, model.input, &mut t)?;
            inputs.push((t, (lb.dst_w, lb.dst_h)));
        }
        frames += 1;
    }
    for (t, size) in inputs.iter().take(5) {
        model.run(&[t], *size)?;
    }
    println!("video={} frames={frames} model={} threads={threads} rounds={rounds}", video.display(), model_path.display());
    let (video_arg, model_arg, threads_arg) = (video.to_string_lossy(), model_path.to_string_lossy(), threads.to_string());
    // Bare inference before the first detector run and after each: every detector run is
    // compared with the mean of the bare rates measured just before and just after it, so a
    // machine whose speed drifts disturbs the ratio less.
    let mut bare = || -> Result<f64, Box<dyn std::error::Error>> {
        let t = Instant::now();
        for i in 0..frames {
            let (t, size) = &inputs[i % inputs.len()];
            model.run(&[t], *size)?;
        }
        Ok(frames as f64 / t.elapsed().as_secs_f64())
    };
    let mut before = bare()?;
    let mut rates = Vec::new();
    for round in 1..=rounds {
        let (messages, secs) = support::run_detector(&["--source", &video_arg, "--model", &model_arg, "--threads", &threads_arg])?;
        if messages != frames {
            return Err(format!("detector: {messages} messages for {frames} frames").into());
        }
        let after = bare()?;
        let (detector_fps, ort_fps) = (messages as f64 / secs, (before + after) / 2.0);
        println!(
            "round={round} ort_fps_before={before:.2} detector_fps={detector_fps:.2} ort_fps_after={after:.2} ratio={:.3}",
            detector_fps / ort_fps
        );
        rates.push((detector_fps / ort_fps, detector_fps, ort_fps));
        before = after;
    }
    // The round with the median ratio: one slow or fast moment does not decide the figure.
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, detector_fps, ort_fps) = rates[rates.len() / 2];
    println!("detector_fps={detector_fps:.2} ort_fps={ort_fps:.2} ratio={ratio:.3}");
    Ok(())
}
