//! detector: video in, person detections out to Kafka. See `detector --help`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::telemetry::exit;
use detector::error::DetectorError;
use detector::{catalog, config, fleet, pipeline, source};

fn main() {
    // First: every line from here on passes through the redaction.
    common::telemetry::init_logs();
    if std::env::args_os().nth(1).is_some_and(|a| a == "cameras") {
        cameras();
    }
    let (cfg, given) = common::cli::parse::<config::Config>();
    let stop = on_signals();

    let unused = if cfg.output == config::OutputKind::Stdout {
        given.which(&["--brokers", "--topic", "-X", "--kafka-config", "--schema-registry"])
    } else {
        vec![]
    };
    if !unused.is_empty() {
        tracing::warn!("--output stdout: {} not used (Kafka settings, for --output kafka)", unused.join(", "));
    }
    let result = cfg.validate().and_then(|cameras| {
        // Here, while this is the only thread that reads the environment: it sets a variable. A
        // fleet host's cameras are not known yet: any may be RTSP.
        let fleet = cfg.fleet.group.is_some();
        let sources = cameras.iter().map(|c| c.source.as_str()).chain(fleet.then_some("rtsp://"));
        source::select_rtsp_transport(sources, cfg.rtsp_transport);
        let pipeline = pipeline::prepare(&cfg, &cameras, &stop)?;
        if fleet {
            fleet::run(&cfg, pipeline, &stop)
        } else {
            pipeline.run(&stop)
        }
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
            exit(s.failed.first().map_or(0, |(_, e)| e.exit_code() as u8))
        }
        Err(DetectorError::Stopped) => {
            tracing::info!("{}", DetectorError::Stopped);
            exit(0)
        }
        Err(e) => {
            tracing::error!(blame = %e.blame(), retryable = e.retryable(), "{}", given.name_variables(&e.to_string()));
            exit(e.exit_code() as u8)
        }
    }
}

/// `detector cameras ...`: manages the camera catalog (docs/fleet.md); prints what it did.
fn cameras() -> ! {
    let args = std::iter::once("detector cameras".into()).chain(std::env::args_os().skip(2));
    let (cli, given) = common::cli::parse_args::<catalog::CatalogCli>(args);
    match catalog::run(cli) {
        Ok(out) => {
            print!("{out}");
            exit(0)
        }
        Err(e) => {
            tracing::error!(blame = %e.blame(), retryable = e.retryable(), "{}", given.name_variables(&e.to_string()));
            exit(e.exit_code() as u8)
        }
    }
}

/// The first SIGINT/SIGTERM sets the flag (stop capture, drain, flush); a second one exits 130 at
/// once. Each is logged.
fn on_signals() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).expect("signal handlers");
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, signal) in signals.forever().enumerate() {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                if n == 0 {
                    tracing::info!(
                        signal = name,
                        "signal received: stopping capture, delivering the frames in flight (a second signal exits at once)"
                    );
                    flag.store(true, Ordering::Relaxed);
                } else {
                    tracing::warn!(signal = name, "second signal: exiting now (130); frames in flight are not delivered");
                    exit(130);
                }
            }
        })
        .expect("signal thread");
    stop
}
