//! Issue 17 on the real binaries: every bad input is one `ERROR` line naming what is wrong and
//! exit 2, before anything connects; an outage is exit 3 with its cause; signals and a closed
//! standard output end a run as documented. (The secrets: `secrets.rs`.)

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;

/// A run of `name` with `args` and these environment variables, from `dir` (the repo's root when
/// `None`).
fn exec(name: &str, args: &[&str], env: &[(&str, &str)], dir: Option<&std::path::Path>) -> Result<std::process::Output> {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).envs(env.iter().copied()).current_dir(dir.map_or_else(repo_root, ToOwned::to_owned));
    // The suite's own variables must not stand in for the flags under test.
    for var in ["KAFKA_BROKERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL"] {
        if !env.iter().any(|(k, _)| *k == var) {
            cmd.env_remove(var);
        }
    }
    run(&mut cmd, Duration::from_secs(60))
}

/// Environment variables of a case.
type Env<'a> = Vec<(&'a str, &'a str)>;

/// Exit `code` and exactly one `ERROR` line, which holds `needle`; no panic.
fn assert_one_line(what: &str, out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{what}: one ERROR line expected: {err}");
    assert!(errors[0].contains(needle), "{what}: expected {needle:?} in: {err}");
    assert!(!err.contains("panicked") && !err.contains("Usage:"), "{what}: {err}");
}

#[test]
fn detector_bad_inputs_are_one_line_and_exit_2() -> Result<()> {
    let dir = TempDir::new("bad-inputs")?;
    let (file, cameras_dup, cameras_loop) = (dir.join("a-file"), dir.join("dup.toml"), dir.join("loop.toml"));
    std::fs::write(&file, "not a directory")?;
    std::fs::write(&cameras_dup, "[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\n\n[[camera]]\nid = \"a\"\nsource = \"b.mp4\"\n")?;
    std::fs::write(
        &cameras_loop,
        "[[camera]]\nid = \"a\"\nsource = \"a.mp4\"\n\n[[camera]]\nid = \"door\"\nsource = \"rtsp://h/1\"\nloop = true\n",
    )?;
    let img = sample("basketball1.png");
    let img = img.to_str().unwrap();
    let odd_path = dir.join("user=me@cam.mp4");
    let (dir_s, file_s, odd_s) = (dir.join("").to_str().unwrap().to_string(), file.to_str().unwrap(), odd_path.to_str().unwrap());
    let (dup_s, loop_s) = (cameras_dup.to_str().unwrap(), cameras_loop.to_str().unwrap());
    let odd_missing = format!("source {odd_s}: no such file");
    let stdout = ["--output", "stdout"];
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        // Wrong exit class before: retried forever as unreachable.
        (vec!["--source", "rtsp://"], vec![], "--source (source) rtsp://...: it names no host"),
        (vec!["--source", "rtsp://[::1"], vec![], "--source (source) rtsp://...: its host has a '[' that is never closed"),
        (vec!["--brokers", "", "--source", img], vec![], "--brokers is empty"),
        (vec!["--topic", "", "--source", img], vec![], "--topic \"\" is not a Kafka topic name"),
        (vec!["-X", "acks=several", "--source", img], vec![], "Kafka property acks: "),
        // Misleading messages before.
        (vec!["--source", &dir_s], vec![], "is a directory, not a video file or an image"),
        (vec!["--source", "ftp://h/x.mp4"], vec![], "the detector does not read ftp://"),
        (vec!["--source", "file:///x.mp4"], vec![], "give the file's path itself, without file://"),
        (vec!["--source", img, "--snapshot-dir", file_s], vec![], "exists and is not a directory"),
        (vec!["--source", odd_s], vec![], &odd_missing),
        (vec!["--source", img, "--conf", "-1"], vec![], "--conf must be within 0 and 1, got -1"),
        (vec!["--source", img, "--max-fps", "-3"], vec![], "--max-fps (max_fps) must be 0 (no cap) to 1000, got -3"),
        (vec!["--source", img, "--open-timeout-s", "-5"], vec![], "--open-timeout-s \"-5\" is not a valid value: it must not be negative"),
        (vec!["--source", img], vec![("DETECTOR_CONF", "abc")], "DETECTOR_CONF=\"abc\" (for --conf) is not a valid value"),
        (vec!["--source", img], vec![("DETECTOR_CONF", "7")], "--conf must be within 0 and 1, got 7 (--conf is set by DETECTOR_CONF)"),
        // A boolean variable takes 1: the error is the loop's, not the value's.
        (vec!["--source", "rtsp://h/1"], vec![("DETECTOR_LOOP", "1")], "apply to video files only"),
        (
            vec!["--source", img, "--classes", "person,unicorn"],
            vec![],
            "--classes: the model has no class \"unicorn\" (its classes: person)",
        ),
        (vec!["--source", img, "--crowd-people", "3"], vec![], "crowd alert (--crowd-people, crowd_people) needs --metrics-addr"),
        (vec!["--source", img, "--metrics-addr", "nohost"], vec![], "--metrics-addr \"nohost\" is not a valid value"),
        (vec!["--source", img, "--bogus"], vec![], "unexpected argument '--bogus' found"),
        (vec!["--cameras", dup_s], vec![], "line 5: camera id \"a\" is listed twice"),
        (vec!["--cameras", loop_s], vec![], "line 5: camera \"door\": --loop and --realtime"),
    ];
    for (args, env, needle) in cases {
        let model = model();
        let mut all = vec!["--model", model.to_str().unwrap()];
        all.extend(&args);
        // Kafka's flags are checked for --output kafka; the others with stdout, no broker needed.
        if !args.iter().any(|a| ["--brokers", "--topic", "-X"].contains(a)) {
            all.extend(stdout);
        }
        let out = exec("detector", &all, &env, None)?;
        assert_one_line(&format!("{args:?} {env:?}"), &out, 2, needle);
    }
    // Run from outside the repository, the default model path says where it was looked for.
    let out = exec("detector", &["--source", img, "--output", "stdout"], &[], Some(dir.join("").as_path()))?;
    assert_one_line("default model elsewhere", &out, 2, "a relative path is taken from the working directory");
    Ok(())
}

#[test]
fn sink_bad_inputs_are_exit_2_and_outages_exit_3_with_their_cause() -> Result<()> {
    let admin = admin_db_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let password = admin.split_once("://").unwrap().1.split_once('@').unwrap().0.split_once(':').unwrap().1.to_string();
    let wrong_password = base.replacen(&format!(":{password}@"), ":wrong-password@", 1) + "/detections";
    let no_db = format!("{base}/{}", unique("no_such_db"));
    // Nothing listens on port 1: checks that come first must not wait for it.
    let away = "postgres://pipeline:pipeline@127.0.0.1:1/detections";
    let cases: Vec<(Vec<&str>, &str, i32, &str)> = vec![
        (vec!["migrate"], "mysql://u:pw@127.0.0.1:1/db", 2, "is not PostgreSQL's: it must start with postgres://"),
        (vec!["migrate"], &wrong_password, 2, "password authentication failed"),
        (vec!["migrate"], &no_db, 2, "does not exist"),
        (vec!["migrate"], away, 3, "Connection refused"),
        (vec!["run", "--group-id", ""], away, 2, "--group-id is empty"),
        (vec!["run", "-X", "no.such.property=1"], away, 2, "Kafka property no.such.property"),
        (vec!["run", "--brokers", ""], away, 2, "--brokers is empty"),
        (vec!["run", "--topic", ""], away, 2, "--topic \"\" is not a Kafka topic name"),
        (vec!["run", "--metrics-addr", "localhost:x"], away, 2, "--metrics-addr \"localhost:x\" is not a valid value"),
        (vec!["policy", "--retention-days", "-1"], away, 2, "--retention-days \"-1\" is not a valid value: it must not be negative"),
        (vec!["policy", "--retention-days=-1"], away, 2, "it must not be negative"),
        (vec!["policy", "--retention-days", "99999"], away, 2, "--retention-days must be within 0 and 36600, got 99999"),
        (vec!["policy", "--days-ahead", "0"], away, 2, "--days-ahead must be within 1 and 366, got 0"),
    ];
    for (args, db, code, needle) in cases {
        let out = exec("sink", &args, &[("DATABASE_URL", db)], None)?;
        assert_one_line(&format!("{args:?} {db}"), &out, code, needle);
    }
    // Variables: a boolean takes 0, and an error names the variable that set the flag.
    let out = exec("sink", &["run"], &[("DATABASE_URL", away), ("SINK_WRITE_WHEN_IDLE", "0"), ("SINK_BATCH_MS", "0")], None)?;
    assert_one_line("variables", &out, 2, "--batch-ms must be within 1 and 60000 (rows wait that long at most before they are written), got 0 (--batch-ms is set by SINK_BATCH_MS)");
    Ok(())
}

#[test]
fn kafka_settings_with_stdout_are_named_as_unused() -> Result<()> {
    let img = sample("basketball1.png");
    let registry = format!("http://127.0.0.1:{}/apis/ccompat/v7", free_port()?);
    let out = exec(
        "detector",
        &[
            "--source",
            img.to_str().unwrap(),
            "--model",
            model().to_str().unwrap(),
            "--output",
            "stdout",
            "--brokers",
            "h:1",
            "-X",
            "acks=1",
        ],
        &[("SCHEMA_REGISTRY_URL", &registry)],
        None,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("--output stdout: --brokers, -X, --schema-registry not used"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    Ok(())
}

#[test]
fn metrics_addr_by_name_and_port_0_logs_the_bound_port() -> Result<()> {
    let det = Spawned::start(Command::new(bin("detector")).current_dir(repo_root()).args([
        "--source",
        sample("vtest.avi").to_str().unwrap(),
        "--realtime",
        "--output",
        "stdout",
        "--metrics-addr",
        "localhost:0",
    ]))?;
    det.wait_stderr("the metrics line", Duration::from_secs(60), |e| e.contains("metrics at http://"))?;
    let err = det.stderr();
    let addr = err.split("metrics at http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    assert!(http_get(&addr, "/metrics")?.contains("detector_frames_read_total"));
    det.signal("TERM");
    let (status, _, _) = det.finish(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() -> Result<()> {
    let mut child = Command::new(bin("detector"))
        .current_dir(repo_root())
        .args(["--source", sample("vtest.avi").to_str().unwrap(), "--output", "stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // `| head -1`: one line read, then the pipe closed.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first)?;
    assert!(first.starts_with('{'), "{first}");
    let out = wait_output(child, Duration::from_secs(120))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("ERROR") && err.contains("standard output closed by its reader: stopping"), "{err}");
    Ok(())
}

#[test]
fn a_signal_during_the_broker_check_stops_at_once() -> Result<()> {
    // Nothing answers at 127.0.0.1:1: the check would wait its 10 s, then exit 3.
    let det = Spawned::start(Command::new(bin("detector")).current_dir(repo_root()).args([
        "--source",
        sample("basketball1.png").to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ]))?;
    det.wait_stderr("the broker check", Duration::from_secs(60), |e| e.contains("connecting to kafka"))?;
    det.signal("INT");
    let (status, _, err) = det.finish(Duration::from_secs(60))?;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("signal received") && err.contains("stopped by a signal during start-up"), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    Ok(())
}

#[test]
fn a_second_signal_exits_130_with_a_line() -> Result<()> {
    // A registry that takes the connection and never answers holds the start-up probe, which a
    // first signal does not cut short.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let registry = format!("http://{}/apis/ccompat/v7", listener.local_addr()?);
    let det = Spawned::start(Command::new(bin("detector")).current_dir(repo_root()).args([
        "--source",
        sample("basketball1.png").to_str().unwrap(),
        "--schema-registry",
        &registry,
    ]))?;
    let (mut held, _) = listener.accept()?;
    det.signal("TERM");
    det.wait_stderr("the first signal's line", Duration::from_secs(10), |e| e.contains("signal received"))?;
    det.signal("TERM");
    let (status, _, err) = det.finish(Duration::from_secs(30))?;
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("second signal: exiting now (130)"), "{err}");
    let mut request = [0u8; 16];
    assert!(held.read(&mut request)? > 0, "the probe had been sent");
    Ok(())
}

/// The docs match the binaries: every flag `--help` lists is in the service's doc, and the help
/// points where it should (the docs' section, the log level, the exit codes).
#[test]
fn every_flag_is_documented_and_the_help_points_where_it_should() -> Result<()> {
    let help = |name: &str, args: &[&str]| -> Result<String> {
        let out = exec(name, args, &[], None)?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    for (name, args, doc) in [
        ("detector", &["--help"][..], "docs/detector.md"),
        ("sink", &["run", "--help"], "docs/sink.md"),
        ("sink", &["policy", "--help"], "docs/sink.md"),
    ] {
        let text = help(name, args)?;
        let documented = std::fs::read_to_string(repo_root().join(doc))?;
        let flags = text.split_whitespace().filter_map(|w| w.strip_prefix("--")).map(|f| f.trim_end_matches([',', '.', ')', ':']));
        for flag in
            flags.filter(|f| f.len() > 1 && f.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !["help", "version"].contains(f))
        {
            assert!(documented.contains(&format!("`--{flag}")), "{name} {args:?}: --{flag} is not in {doc}");
        }
        assert!(text.contains("RUST_LOG") && text.contains("130 a second signal") && text.contains(doc), "{text}");
    }
    let detector = help("detector", &["--help"])?;
    assert!(detector.contains("See docs/detector.md, \"Many cameras\"") && detector.contains("YOLOv5"), "{detector}");
    assert!(!help("sink", &["run", "--help"])?.contains("9187"), "the PostgreSQL exporter's port");
    Ok(())
}
