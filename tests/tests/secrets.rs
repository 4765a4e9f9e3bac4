//! Secrets never shown: every flag and environment variable that can carry one (the database URL's
//! password, as user information and as `?password=`, one with an `@` in it; the registry URL's
//! credentials; a camera URL's password; `-X sasl.password`), through `--help`, the start-up log
//! lines and the error lines of a run that fails, for both services.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;

const SECRETS: [&str; 5] = ["hunter2x", "p@ss@hunter3", "hunter4x", "hunter5x", "hunter6x"];

fn assert_clean(what: &str, out: &std::process::Output) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for s in SECRETS {
        // A password with an @ must not leak in part either.
        for piece in s.split('@').filter(|p| p.len() > 3) {
            assert!(!text.contains(piece), "{what} shows {piece:?}:\n{text}");
        }
    }
}

#[test]
fn neither_service_shows_a_secret() -> Result<()> {
    let db = format!("postgres://pipeline:{}@127.0.0.1:9/detections?password={}", SECRETS[1], SECRETS[0]);
    let registry = format!("http://svc:{}@127.0.0.1:9/apis/ccompat/v7", SECRETS[2]);
    let sasl = format!("sasl.password={}", SECRETS[3]);
    let camera = format!("rtsp://admin:{}@127.0.0.1:9/stream", SECRETS[4]);
    let sink = || {
        let mut c = Command::new(bin("sink"));
        c.env("DATABASE_URL", &db).env("SCHEMA_REGISTRY_URL", &registry);
        c
    };
    let detector = || {
        let mut c = Command::new(bin("detector"));
        c.env("DETECTOR_SOURCE", &camera).env("SCHEMA_REGISTRY_URL", &registry);
        c
    };
    // --help, with the secrets in the environment.
    assert_clean("sink run --help", &run(sink().args(["run", "--help"]), Duration::from_secs(30))?);
    assert_clean("sink migrate --help", &run(sink().args(["migrate", "--help"]), Duration::from_secs(30))?);
    assert_clean("detector --help", &run(detector().arg("--help"), Duration::from_secs(30))?);
    // A sink that cannot reach its database (port 9): the error names the URL, without them.
    let out = run(sink().args(["run", "-X", &sasl, "--brokers", &brokers()]), Duration::from_secs(60))?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("postgres://pipeline:***@127.0.0.1:9/detections?password=***"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean("sink run", &out);
    let out = run(sink().args(["migrate"]), Duration::from_secs(60))?;
    assert!(!out.status.success());
    assert_clean("sink migrate", &out);
    // A detector whose registry is away (port 9): the error names the registry, not its
    // credentials.
    let out = run(
        detector().args(["--camera-id", "door", "--model", model().to_str().unwrap(), "--brokers", &brokers()]),
        Duration::from_secs(60),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("schema registry at http://127.0.0.1:9/apis/ccompat/v7 is unavailable"), "{stderr}");
    assert_clean("detector, registry away", &out);
    // One whose brokers are away: it has logged its Kafka settings by then.
    let out = run(
        Command::new(bin("detector")).arg("--source").arg(sample("basketball1.png")).args([
            "--model",
            model().to_str().unwrap(),
            "--brokers",
            "127.0.0.1:9",
            "-X",
            &sasl,
        ]),
        Duration::from_secs(60),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("sasl.password=<redacted>"), "{stderr}");
    assert_clean("detector, brokers away", &out);
    // The camera's URL, shown in its start-up and reconnect lines, has no password either.
    let det = Spawned::start(Command::new(bin("detector")).args([
        "--source",
        &camera,
        "--output",
        "stdout",
        "--model",
        model().to_str().unwrap(),
        "--open-timeout-s",
        "2",
    ]))?;
    det.wait_stderr("a reconnect attempt", Duration::from_secs(60), |e| e.contains("live source unavailable"))?;
    det.signal("TERM");
    let (_, _, stderr) = det.finish(Duration::from_secs(60))?;
    assert!(stderr.contains("rtsp://admin:***@127.0.0.1:9/stream"), "{stderr}");
    for s in SECRETS {
        assert!(!stderr.contains(s), "the detector shows {s:?}:\n{stderr}");
    }
    Ok(())
}

/// The places the test above does not walk: `-X` keys librdkafka does not know (its error echoed
/// the value), a registry token in the query, a broken registry URL, the Kafka properties file (as
/// a flag and as a variable), a camera of a cameras file, the sink's `-X` and command-line
/// database URL, and libpq's `PGPASSWORD`.
#[test]
fn secrets_in_every_other_place_are_hidden() -> Result<()> {
    let s: Vec<String> = (1..=11).map(|i| format!("sekrit{i:02}x")).collect();
    let no_secret = |what: &str, out: &std::process::Output, code: i32| {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{what}: {text}");
        for secret in &s {
            assert!(!text.contains(secret.as_str()), "{what} shows {secret}:\n{text}");
        }
        text
    };
    let img = sample("basketball1.png");
    let detector = |args: &[&str]| {
        let mut c = Command::new(bin("detector"));
        c.arg("--source").arg(&img).args(["--model", model().to_str().unwrap()]).args(args).env_remove("SCHEMA_REGISTRY_URL");
        c
    };
    let out = run(&mut detector(&["--brokers", "127.0.0.1:1", "-X", &format!("ssl.truststore.password={}", s[0])]), T)?;
    no_secret("-X ssl.truststore.password", &out, 2);
    let out = run(&mut detector(&["--brokers", "127.0.0.1:1", "-X", &format!("my.password={}", s[1])]), T)?;
    no_secret("-X my.password", &out, 2);
    let out = run(&mut detector(&["--schema-registry", &format!("http://127.0.0.1:1/x?token={}", s[2])]), T)?;
    assert!(no_secret("registry token", &out, 3).contains("http://127.0.0.1:1/x?token=***"));
    let out = run(&mut detector(&["--schema-registry", &format!("http://svc:{}@", s[10])]), T)?;
    no_secret("broken registry URL", &out, 2);

    let dir = TempDir::new("secrets")?;
    let props = dir.join("client.properties");
    std::fs::write(
        &props,
        format!("# SASL, kept off the command line\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\nsasl.username=u\nsasl.password={}\n", s[3]),
    )?;
    let out = run(&mut detector(&["--brokers", "127.0.0.1:1", "--kafka-config", props.to_str().unwrap()]), T)?;
    assert!(no_secret("--kafka-config", &out, 3).contains("sasl.password=<redacted>"));
    let unknown = dir.join("unknown.properties");
    std::fs::write(&unknown, format!("my.token={}\n", s[4]))?;
    let out = run(detector(&["--brokers", "127.0.0.1:1"]).env("KAFKA_CONFIG_FILE", &unknown), T)?;
    assert!(no_secret("KAFKA_CONFIG_FILE", &out, 2).contains("Kafka property my.token"));

    // A camera of a cameras file: its start-up and reconnect lines (ours, OpenCV's, FFmpeg's).
    let cameras = dir.join("cameras.toml");
    std::fs::write(&cameras, format!("[[camera]]\nid = \"door\"\nsource = \"rtsp://admin:{}@127.0.0.1:9/stream\"\n", s[5]))?;
    let det = Spawned::start(Command::new(bin("detector")).args([
        "--cameras",
        cameras.to_str().unwrap(),
        "--output",
        "stdout",
        "--model",
        model().to_str().unwrap(),
        "--open-timeout-s",
        "2",
    ]))?;
    det.wait_stderr("a reconnect attempt", T, |e| e.contains("live source unavailable"))?;
    det.signal("TERM");
    let (_, _, stderr) = det.finish(T)?;
    assert!(stderr.contains("rtsp://admin:***@127.0.0.1:9/stream") && !stderr.contains(&s[5]), "{stderr}");

    let sink = |args: &[&str]| {
        let mut c = Command::new(bin("sink"));
        c.args(args).env_remove("DATABASE_URL").env_remove("SCHEMA_REGISTRY_URL");
        c
    };
    let away = format!("postgres://pipeline:{}@127.0.0.1:1/detections", s[8]);
    let out = run(
        &mut sink(&["run", "--database-url", &away, "-X", &format!("sasl.password={}", s[6]), "-X", &format!("bogus.key={}", s[7])]),
        T,
    )?;
    assert!(no_secret("sink -X", &out, 2).contains("Kafka property bogus.key"));
    let out = run(&mut sink(&["migrate", "--database-url", &away]), T)?;
    assert!(no_secret("sink --database-url", &out, 3).contains("postgres://pipeline:***@127.0.0.1:1/detections"));
    let admin = admin_db_url();
    let host = admin.rsplit_once('@').unwrap().1.rsplit_once('/').unwrap().0;
    let out = run(sink(&["migrate", "--database-url", &format!("postgres://pipeline@{host}/detections")]).env("PGPASSWORD", &s[9]), T)?;
    no_secret("PGPASSWORD", &out, 2);
    Ok(())
}

const T: Duration = Duration::from_secs(60);
