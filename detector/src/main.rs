//! detector: video in, person detections out to Kafka. See `detector --help`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use detector::{config, pipeline, source};

fn main() -> ExitCode {
    let cfg = config::Config::parse();
    common::telemetry::init_logs();

    // First SIGINT/SIGTERM: stop capture, drain, flush. A second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop)).expect("signal handler");
        signal_hook::flag::register(sig, Arc::clone(&stop)).expect("signal handler");
    }

    let result = cfg.validate().and_then(|cameras| {
        // Here, while this is the only thread: it sets an environment variable.
        source::select_rtsp_transport(cameras.iter().map(|c| c.source.as_str()), cfg.rtsp_transport);
        pipeline::prepare(&cfg, &cameras).and_then(|p| p.run(&stop))
    });
    match result {
        Ok(s) => {
            let failed: Vec<&str> = s.failed.iter().map(|(id, _)| id.as_str()).collect();
            tracing::info!(
                frames = s.frames_read,
                skipped = s.frames_skipped,
                dropped = s.frames_dropped,
                reconnects = s.reconnects,
                messages = s.messages,
                inference_runs = s.inference_runs,
                failed_cameras = ?failed,
                seconds = format!("{:.1}", s.elapsed.as_secs_f64()),
                fps = format!("{:.1}", s.messages as f64 / s.elapsed.as_secs_f64()),
                "detector finished"
            );
            // Each camera's fault had its ERROR line when it happened; the exit says the first.
            match s.failed.first() {
                Some((_, e)) => ExitCode::from(e.exit_code() as u8),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            tracing::error!(blame = %e.blame(), retryable = e.retryable(), "{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
