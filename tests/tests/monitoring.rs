//! The monitoring end to end: the real pipeline (a detector with two cameras, a sink) on the real
//! broker and database, scraped by a real Prometheus with the repo's config and alert rules
//! (`scripts/services.sh start monitoring`, which also runs Alertmanager and PostgreSQL's exporter;
//! the broker carries the JMX exporter agent). A crowd alert with a low threshold fires and reaches
//! Alertmanager, which delivers it to a webhook this test runs on loopback; so does a zone's crowd
//! alert (the detector tracks, with one zone over the whole frame); a camera taken away fires
//! CameraDown. Every PromQL query of the Grafana dashboards returns series from this Prometheus,
//! and every SQL panel runs on the test database. Alone in its file: it runs the shared
//! monitoring services.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::registry::percent_encode;
use pipeline_tests::*;

const PROMETHEUS: &str = "127.0.0.1:9090";

/// Stops the monitoring services when dropped.
struct Monitoring;

impl Drop for Monitoring {
    fn drop(&mut self) {
        let _ = services(&["stop", "monitoring"], false);
    }
}

/// An HTTP server on loopback that keeps the body of every POST: Alertmanager's webhook.
fn webhook() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("a stream"));
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    Ok((port, bodies))
}

/// The first firing alert of this name (and camera) Alertmanager delivered.
fn delivered(bodies: &Mutex<Vec<String>>, alert: &str, camera: &str) -> bool {
    bodies.lock().unwrap().iter().any(|b| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
        v["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| a["status"] == "firing" && a["labels"]["alertname"] == alert && a["labels"]["camera"] == camera)
        })
    })
}

/// A PromQL query against the live Prometheus: its result list.
fn query(expr: &str) -> Result<Vec<serde_json::Value>> {
    let body = http_get(PROMETHEUS, &format!("/api/v1/query?query={}", percent_encode(expr)))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(v["status"] == "success", "{expr}: {body}");
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_alertmanager_and_every_dashboard_query_answers() -> Result<()> {
    let (hook_port, bodies) = webhook()?;
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/services.sh"))
        .args(["start", "monitoring"])
        .env("ALERT_WEBHOOK_URL", format!("http://127.0.0.1:{hook_port}/alerts"))
        .status()?;
    ensure!(status.success(), "starting the monitoring failed");
    let _monitoring = Monitoring;

    let dir = TempDir::new("monitoring")?;
    let mp4 = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let rtsp_port = free_port()?;
    let server = start_rtsp_server(&mp4, rtsp_port)?;
    let cameras = dir.join("cameras.toml");
    // "door" plays the sample as a camera, with thresholds that its people pass at once, in view
    // and in its one zone (the whole frame); "gate" is a live stream that will go away.
    std::fs::write(
        &cameras,
        format!(
            "[[camera]]\nid = \"door\"\nsource = \"{}\"\nrealtime = true\nloop = true\nmax_fps = 4\ncrowd_people = 0\ncrowd_seconds = 10\n\n\
             [[camera.rules.zones]]\nname = \"all\"\npolygon = [[0, 0], [768, 0], [768, 576], [0, 576]]\n\
             alert = {{ crowd_people = 0, crowd_seconds = 5 }}\n\n\
             [[camera]]\nid = \"gate\"\nsource = \"rtsp://127.0.0.1:{rtsp_port}/stream\"\nmax_fps = 2\ncrowd_people = 50\nread_timeout_s = 3\n",
            sample("vtest.avi").display()
        ),
    )?;
    let (topic, db) = fresh_topic_and_db("monitoring", 2).await?;
    let (detector_addr, sink_addr) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--metrics-addr", &sink_addr])?;
    let started = Instant::now();
    let detector = Spawned::start(Command::new(bin("detector")).arg("--cameras").arg(&cameras).args([
        "--model",
        model().to_str().unwrap(),
        "--topic",
        &topic,
        "--brokers",
        &brokers(),
        "--metrics-addr",
        &detector_addr,
        "--track",
    ]))?;
    // Prometheus finds the two processes in its file-discovered targets.
    let targets = state_dir().join("monitoring/targets");
    std::fs::write(targets.join("detector.json"), format!("[{{\"targets\": [\"{detector_addr}\"]}}]"))?;
    std::fs::write(targets.join("sink.json"), format!("[{{\"targets\": [\"{sink_addr}\"]}}]"))?;

    let wait = |what: &str, timeout: Duration, done: &dyn Fn() -> bool| -> Result<f64> {
        let t = Instant::now();
        while !done() {
            if t.elapsed() > timeout {
                bail!("waited {timeout:?} for {what}; webhook got {:?};\ndetector:\n{}", bodies.lock().unwrap(), detector.stderr());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let crowd_at = wait("the crowd alert at the webhook", Duration::from_secs(180), &|| delivered(&bodies, "CrowdInView", "door"))?;
    assert!(!delivered(&bodies, "CrowdInView", "gate"), "gate's threshold is 50 people");
    let zone_crowd_at =
        wait("the zone crowd alert at the webhook", Duration::from_secs(120), &|| delivered(&bodies, "ZoneCrowded", "door"))?;

    // Every scrape target answers: the two processes, the broker's JMX agent, the database's
    // exporter, Alertmanager and Prometheus itself.
    let health: serde_json::Value = serde_json::from_str(&http_get(PROMETHEUS, "/api/v1/targets")?)?;
    let mut up = Vec::new();
    for t in health["data"]["activeTargets"].as_array().context("targets")? {
        up.push(format!("{}={}", t["labels"]["job"].as_str().unwrap_or("?"), t["health"].as_str().unwrap_or("?")));
    }
    up.sort();
    for job in ["alertmanager", "detector", "kafka", "postgres", "prometheus", "sink"] {
        assert!(up.contains(&format!("{job}=up")), "{job} not up: {up:?}");
    }

    // Every query of every dashboard panel.
    let mut conn = db.connect().await?;
    let mut checked = (0, 0);
    for name in ["pipeline-overview.json", "people.json"] {
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo_root().join("monitoring/grafana/dashboards").join(name))?)?;
        for panel in dash["panels"].as_array().context("panels")? {
            for target in panel["targets"].as_array().context("targets")? {
                if let Some(expr) = target["expr"].as_str() {
                    let q = grafana_vars(expr, &["door", "gate"]);
                    let result = query(&q)?;
                    assert!(!result.is_empty(), "{name}, panel {:?}: {q} returned no series", panel["title"]);
                    checked.0 += 1;
                }
                if let Some(sql) = target["rawSql"].as_str() {
                    let q = grafana_sql(sql, &["door", "gate"]);
                    sqlx::query(sqlx::AssertSqlSafe(q.clone())).fetch_all(&mut conn).await.with_context(|| format!("{name}: {q}"))?;
                    checked.1 += 1;
                }
            }
        }
    }

    // The live camera goes away: CameraDown, after its minute.
    let gone = Instant::now();
    drop(server);
    let down_at = wait("CameraDown for gate", Duration::from_secs(240), &|| delivered(&bodies, "CameraDown", "gate"))?;
    let down_after = gone.elapsed().as_secs_f64();
    detector.signal("TERM");
    let (status, _, stderr) = detector.finish(Duration::from_secs(60))?;
    let _ = sink.stop()?;
    ensure!(status.success(), "{stderr}");
    println!(
        "monitoring: CrowdInView at the webhook {crowd_at:.0} s after the detector started, ZoneCrowded {zone_crowd_at:.0} s; CameraDown {down_after:.0} s after the camera went away ({down_at:.0} s in); \
         targets {up:?}; {} PromQL and {} SQL dashboard queries answered",
        checked.0, checked.1
    );
    Ok(())
}
