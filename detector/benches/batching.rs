//! What batching gains: CAMERAS file cameras on the same clip in one detector process, through the
//! shared inference worker, once with the fixed-batch model (one ONNX Runtime call a frame) and
//! once with its dynamic-batch twin (up to CAMERAS frames a call); same weights, same threads.
//!   cargo bench -p detector --bench batching [-- CAMERAS [SECONDS]]
//! The clip is the first SECONDS (default 30) of samples/vtest.avi, cut without re-encoding.
//! Last line: `unbatched_fps=<f> batched_fps=<f> gain=<f>`.

use std::path::PathBuf;
use std::process::Command;

mod support;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // cargo bench passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let cameras: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(4);
    let seconds: u32 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(30);

    let dir = std::env::temp_dir().join(format!("batching-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clip = dir.join("clip.avi");
    let cut = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(root.join("samples/vtest.avi"))
        .args(["-t", &seconds.to_string(), "-c", "copy"])
        .arg(&clip)
        .status()?;
    if !cut.success() {
        return Err("ffmpeg could not cut the clip".into());
    }
    let toml: String = (0..cameras).map(|i| format!("[[camera]]\nid = \"cam{i}\"\nsource = \"{}\"\n\n", clip.display())).collect();
    let cameras_file = dir.join("cameras.toml");
    std::fs::write(&cameras_file, toml)?;
    let cameras_arg = cameras_file.to_string_lossy();
    let batch_arg = cameras.to_string();

    let mut fps = Vec::new();
    for model in ["models/yolo11n-pose.onnx", "models/yolo11n-pose-batch.onnx"] {
        let model_arg = root.join(model).to_string_lossy().into_owned();
        let (messages, secs) = support::run_detector(&["--cameras", &cameras_arg, "--model", &model_arg, "--max-batch", &batch_arg])?;
        println!("model={model} cameras={cameras} messages={messages} seconds={secs:.2} fps={:.2}", messages as f64 / secs);
        fps.push(messages as f64 / secs);
    }
    std::fs::remove_dir_all(&dir)?;
    println!("unbatched_fps={:.2} batched_fps={:.2} gain={:.3}", fps[0], fps[1], fps[1] / fps[0]);
    Ok(())
}
