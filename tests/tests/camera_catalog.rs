//! `detector cameras` on the real broker: the camera catalog is a compacted topic it creates; a
//! new camera goes to the least loaded partition and stays there when it changes; `list` prints a
//! cameras file that `apply` finds equal; `apply` of a file with one camera changed, one added and
//! one removed writes exactly those three records; entries are refused with the cameras file's
//! own error lines, a password in clear is refused without being shown, and a topic that is not
//! compacted is refused. And a cameras file's `${NAME}` references are expanded by the detector
//! that runs it.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// As on a fleet host, whose environment says which fleet it is in: the command takes the
/// host's defaults from its environment, but not that.
fn cameras(topic: &str, action: &str, args: &[&str]) -> Result<Output> {
    run(
        Command::new(bin("detector"))
            .args(["cameras", action, "--catalog", topic, "--partitions", "3", "--brokers", &brokers()])
            .args(args)
            .env("DETECTOR_FLEET", "hosts"),
        Duration::from_secs(60),
    )
}

/// Stdout of a run that must succeed.
fn ok(out: Output) -> Result<String> {
    ensure!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Stderr of a run that must fail with exit 2.
fn refused(out: Output) -> Result<String> {
    ensure!(out.status.code() == Some(2), "{}: {}", out.status, String::from_utf8_lossy(&out.stdout));
    Ok(String::from_utf8(out.stderr)?)
}

/// The partition an output line gives a camera: `added camera=door partition=0 offset=0`.
fn partition_of(out: &str, camera: &str) -> Option<i32> {
    out.lines()
        .find(|l| l.contains(&format!(" camera={camera} ")))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("partition=")?.parse().ok())
}

const CAMERAS: &str = r#"[[camera]]
id = "door"
source = "rtsp://viewer:${DOOR_PASSWORD}@cam-1.local/stream"
max_fps = 5.0

[camera.rules]
[[camera.rules.zones]]
name = "queue"
polygon = [[0, 0], [100, 0], [100, 100]]

[[camera]]
id = "yard"
source = "/videos/yard.mp4"
realtime = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_a_compacted_topic_that_put_and_apply_keep_equal_to_a_file() -> Result<()> {
    let dir = TempDir::new("catalog")?;
    let topic = unique("cameras");
    let file = dir.join("cameras.toml");
    std::fs::write(&file, CAMERAS)?;

    // New cameras fill the emptiest partitions, first to last.
    let out = ok(cameras(&topic, "put", &["--file", file.to_str().unwrap()])?)?;
    assert_eq!((partition_of(&out, "door"), partition_of(&out, "yard")), (Some(0), Some(1)), "{out}");
    let out = ok(cameras(&topic, "put", &["--id", "gate", "--source", "rtsp://cam-2.local/s", "--set", "max_fps=2.0"])?)?;
    assert_eq!(partition_of(&out, "gate"), Some(2), "{out}");
    let out = ok(cameras(&topic, "put", &["--id", "hall", "--source", "/videos/hall.mp4"])?)?;
    assert_eq!(partition_of(&out, "hall"), Some(0), "{out}");
    // Changed, it stays in its partition; put again unchanged, nothing is written.
    let out = ok(cameras(&topic, "put", &["--id", "gate", "--source", "rtsp://cam-2.local/s", "--set", "max_fps=3.0"])?)?;
    assert!(out.starts_with("changed camera=gate partition=2 "), "{out}");
    let out = ok(cameras(&topic, "put", &["--id", "gate", "--source", "rtsp://cam-2.local/s", "--set", "max_fps=3.0"])?)?;
    assert_eq!(out, "unchanged camera=gate partition=2\n");
    assert_eq!(topic_size(&topic)?, 5);

    // The topic is compacted.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create()?;
    let configs = admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new()).await?;
    let policy = configs.into_iter().next().and_then(Result::ok).and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
    assert_eq!(policy.as_deref(), Some("compact"));

    // `list` is a cameras file, with the references as written, equal to the catalog.
    let listed = ok(cameras(&topic, "list", &[])?)?;
    assert!(listed.contains("${DOOR_PASSWORD}") && listed.contains("# camera \"door\": partition 0"), "{listed}");
    let copy = dir.join("listed.toml");
    std::fs::write(&copy, &listed)?;
    let out = ok(cameras(&topic, "apply", &[copy.to_str().unwrap()])?)?;
    assert!(out.ends_with("applied added=0 changed=0 removed=0 unchanged=4\n"), "{out}");

    // One changed, one added, one removed: three records, the removal a tombstone.
    let edited = listed
        .replace("max_fps = 5.0", "max_fps = 4.0")
        .replace("id = \"yard\"", "id = \"lobby\"")
        .replace("/videos/yard.mp4", "/videos/lobby.mp4");
    ensure!(edited != listed, "the edits apply");
    std::fs::write(&copy, &edited)?;
    let before = topic_size(&topic)?;
    let out = ok(cameras(&topic, "apply", &[copy.to_str().unwrap()])?)?;
    assert!(out.ends_with("applied added=1 changed=1 removed=1 unchanged=2\n"), "{out}");
    assert_eq!(topic_size(&topic)? - before, 3);
    assert_eq!(partition_of(&out, "lobby"), Some(1), "the least loaded partition when it was put: {out}");
    let records = read_topic(&topic, Duration::from_secs(30))?;
    assert_eq!(records.iter().filter(|r| r.payload.is_empty()).count(), 1, "one tombstone");
    let listed = ok(cameras(&topic, "list", &[])?)?;
    let ids: Vec<&str> = listed.lines().filter_map(|l| l.strip_prefix("# camera \"")?.split('"').next()).collect();
    assert_eq!(ids, ["door", "gate", "hall", "lobby"]);

    // Refused: a password in clear (not shown), a bad entry (the cameras file's line), an unknown
    // camera, a topic that is not compacted. Nothing is written.
    let before = topic_size(&topic)?;
    let err = refused(cameras(&topic, "put", &["--id", "x", "--source", "rtsp://u:hunter22@cam/s"])?)?;
    assert!(err.contains("holds a password in clear") && !err.contains("hunter22"), "{err}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, CAMERAS.replace("realtime = true", "max_fps = -1.0"))?;
    let err = refused(cameras(&topic, "put", &["--file", bad.to_str().unwrap()])?)?;
    let detector = run(
        Command::new(bin("detector"))
            .arg("--cameras")
            .arg(&bad)
            .args(["--output", "stdout", "--model", model().to_str().unwrap()])
            .env("DOOR_PASSWORD", "door-pw"),
        Duration::from_secs(60),
    )?;
    let detector_err = refused(detector)?;
    let line = |e: &str| e.split(bad.to_str().unwrap()).nth(1).map(|rest| rest.lines().next().unwrap_or("").to_string());
    assert!(line(&err).is_some_and(|l| l.contains("camera \"yard\": --max-fps (max_fps) must be")), "{err}");
    assert_eq!(line(&err), line(&detector_err), "the detector's own line for the file");
    let err = refused(cameras(&topic, "delete", &["nobody"])?)?;
    assert!(err.contains("camera \"nobody\" is not in the catalog"), "{err}");
    assert_eq!(topic_size(&topic)?, before);
    let plain = unique("plain");
    create_topic(&plain, 1).await?;
    let err = refused(cameras(&plain, "list", &[])?)?;
    assert!(err.contains("must be compacted"), "{err}");
    Ok(())
}

/// The detector expands `${NAME}` in a cameras file's sources from its environment, and names a
/// reference that is not set.
#[test]
fn a_cameras_file_references_the_environment() -> Result<()> {
    let dir = TempDir::new("references")?;
    let file = dir.join("cameras.toml");
    std::fs::write(&file, "[[camera]]\nid = \"still\"\nsource = \"${CATALOG_TEST_SAMPLES}/basketball1.png\"\n")?;
    let detect = |samples: Option<&str>| {
        let mut cmd = Command::new(bin("detector"));
        cmd.arg("--cameras").arg(&file).args(["--output", "stdout", "--model", model().to_str().unwrap()]);
        match samples {
            Some(s) => cmd.env("CATALOG_TEST_SAMPLES", s),
            None => cmd.env_remove("CATALOG_TEST_SAMPLES"),
        };
        run(&mut cmd, Duration::from_secs(120))
    };
    let samples = repo_root().join("samples");
    let out = ok(detect(Some(samples.to_str().unwrap()))?)?;
    assert_eq!(out.lines().count(), 1, "one message for the image: {out}");
    assert!(out.contains("\"camera_id\":\"still\""), "{out}");
    let err = refused(detect(None)?)?;
    assert!(err.contains("camera \"still\": source: ${CATALOG_TEST_SAMPLES} is not set in this host's environment"), "{err}");
    Ok(())
}
