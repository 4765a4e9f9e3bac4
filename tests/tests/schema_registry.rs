//! The wire contract in a real schema registry (Apicurio Registry's Confluent-compatible API, as
//! `scripts/services.sh` runs it): the detector registers the schema once and frames every message
//! with its id, the registry refuses an incompatible change, and the sink stores framed and plain
//! messages alike while unknown ids (after a wait) and messages the schema refuses go to the
//! dead-letter topic.

use std::time::Duration;

use anyhow::{ensure, Result};
use common::registry::RegistryError;
use pipeline_tests::*;
use wire::envelope::{frame, Envelope};

/// `GET` on the registry's API; the body.
fn registry_get(path: &str) -> Result<String> {
    let url = registry_url();
    let rest = url.strip_prefix("http://").expect("an http:// registry");
    let (addr, base) = rest.split_once('/').unwrap_or((rest, ""));
    http_get(addr, &format!("/{base}{path}"))
}

fn schema_id_in(stderr: &[u8]) -> Option<u32> {
    String::from_utf8_lossy(stderr).split_whitespace().find_map(|w| w.strip_prefix("schema_id=")).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_registers_the_schema_once_and_frames_every_message() -> Result<()> {
    let topic = unique("reg");
    create_topic(&topic, 1).await?;
    let image = sample("basketball1.png");
    let args = ["--schema-registry", &registry_url()];
    let first = schema_id_in(&detect_to_kafka(&image, "court", &topic, &args)?.stderr).expect("a schema id in the log");
    let second = schema_id_in(&detect_to_kafka(&image, "court", &topic, &args)?.stderr).expect("a schema id in the log");
    assert_eq!(first, second, "the same schema is found, not registered again");
    let subject = format!("{topic}-value");
    assert_eq!(registry_get(&format!("/subjects/{subject}/versions"))?.trim(), "[1]");
    assert!(registry_get(&format!("/config/{subject}"))?.contains("BACKWARD"));

    for record in read_topic(&topic, Duration::from_secs(30))? {
        match Envelope::open(&record.payload)? {
            Envelope::Framed { schema_id, json } => {
                assert_eq!(schema_id, first);
                let msg = wire::FrameMessage::from_json(json)?;
                assert_eq!((msg.schema_version, msg.detections.len()), (wire::SCHEMA_VERSION, 2));
            }
            plain => panic!("not framed: {plain:?}"),
        }
    }

    // BACKWARD: a schema that makes a new field required could not read what was written.
    let mut incompatible: serde_json::Value = serde_json::from_str(wire::JSON_SCHEMA)?;
    incompatible["required"].as_array_mut().unwrap().push("zone".into());
    incompatible["properties"]["zone"] = serde_json::json!({"type": "string"});
    match registry().register(&subject, &incompatible.to_string()) {
        Err(RegistryError::Refused { status: 409, message, .. }) => assert!(message.contains("required"), "{message}"),
        other => panic!("an incompatible schema was not refused: {other:?}"),
    }
    // An optional field is a compatible change: a new version.
    let mut compatible: serde_json::Value = serde_json::from_str(wire::JSON_SCHEMA)?;
    compatible["properties"]["zone"] = serde_json::json!({"type": "string"});
    let id = registry().register(&subject, &compatible.to_string())?;
    assert_ne!(id, first);
    assert_eq!(registry_get(&format!("/subjects/{subject}/versions"))?.trim(), "[1,2]");
    Ok(())
}

/// The detector fails at start, with one line saying why, rather than publishing what the
/// registry does not know: exit 3 when it cannot be reached, 2 when it refuses the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_will_not_start_without_the_schema_in_the_registry() -> Result<()> {
    let topic = unique("regfail");
    create_topic(&topic, 1).await?;
    let image = sample("basketball1.png");
    let detector = |registry: &str| {
        run(
            std::process::Command::new(bin("detector")).arg("--source").arg(&image).args([
                "--model",
                model().to_str().unwrap(),
                "--topic",
                &topic,
                "--brokers",
                &brokers(),
                "--schema-registry",
                registry,
            ]),
            Duration::from_secs(120),
        )
    };
    let away = detector("http://127.0.0.1:9/apis/ccompat/v7")?;
    let stderr = String::from_utf8_lossy(&away.stderr);
    assert_eq!(away.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("schema registry at http://127.0.0.1:9/apis/ccompat/v7 is unavailable"), "{stderr}");

    // The subject already holds a schema whose data v3 cannot read (a field v3 does not allow),
    // and its operator wants BACKWARD (the detector leaves an existing subject's level alone).
    let mut older: serde_json::Value = serde_json::from_str(wire::JSON_SCHEMA)?;
    older["required"].as_array_mut().unwrap().push("zone".into());
    older["properties"]["zone"] = serde_json::json!({"type": "string"});
    registry().register(&format!("{topic}-value"), &older.to_string())?;
    registry().set_compatibility(&format!("{topic}-value"), "BACKWARD")?;
    let refused = detector(&registry_url())?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused to register a schema under subject") && stderr.contains("HTTP 409"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains(" ERROR ")).count(), 1, "{stderr}");
    assert_eq!(topic_size(&topic)?, 0, "nothing published");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_and_plain_are_stored_and_unknown_ids_dead_lettered() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("regsink", 2).await?;
    let id = registry().register(&format!("{topic}-value"), wire::JSON_SCHEMA)?;
    let unknown = 2_000_000_000u32;
    ensure!(matches!(registry().schema(unknown), Err(RegistryError::UnknownSchema(_))), "id {unknown} exists");
    let frames: Vec<wire::FrameMessage> = (0..60).map(|s| synthetic_frame(&format!("cam-{}", s % 3), s, 2)).collect();
    let mut too_many = synthetic_frame("cam-0", 1000, 0);
    too_many.detections = synthetic_frame("cam-0", 1000, 1).detections.into_iter().cycle().take(wire::MAX_DETECTIONS + 1).collect();
    let mut messages: Vec<(String, Vec<u8>, Option<String>)> = Vec::new();
    for (i, m) in frames.iter().enumerate() {
        let json = m.to_json();
        let payload = if i % 2 == 0 { frame(id, &json) } else { json };
        messages.push((m.camera_id.clone(), payload, None));
    }
    for i in 0..5 {
        messages.push((
            "cam-1".into(),
            frame(unknown, &synthetic_frame("cam-1", 2000 + i, 1).to_json()),
            Some("unknown to the schema registry".into()),
        ));
    }
    messages.push(("cam-0".into(), frame(id, &too_many.to_json()), Some(format!("does not match schema {id}"))));
    messages.push(("cam-0".into(), vec![0, 0, 1], Some("too short".into())));
    produce(&topic, messages.iter().map(|(k, p, _)| (k.as_str(), p.clone())))?;

    // An unknown id waits a while (a registry's follower may not have it yet), then is refused.
    let args = ["--schema-registry", &registry_url(), "--unknown-schema-wait-s", "3"];
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &args)?;
    let mut conn = db.connect().await?;
    let done = wait_for_count(
        &mut conn,
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets",
        messages.len() as i64,
        Duration::from_secs(120),
    )
    .await?;
    let log = sink.stop()?;
    assert_eq!(done, messages.len() as i64, "{log}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM frames").fetch_one(&mut conn).await?;
    assert_eq!(stored, frames.len() as i64, "framed and plain alike:\n{log}");
    assert_eq!(log.matches("schema fetched from the registry").count(), 1, "fetched once, then cached:\n{log}");
    assert!(log.contains(&format!("schema id {unknown} is unknown to the schema registry (yet")), "the unknown id waited:\n{log}");

    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(30))?;
    let expected: Vec<&String> = messages.iter().filter_map(|m| m.2.as_ref()).collect();
    assert_eq!(dead.len(), expected.len(), "{log}");
    for want in expected {
        assert!(dead.iter().any(|d| d.header("dlq.error").is_some_and(|e| e.contains(want.as_str()))), "no dead letter says {want:?}");
    }
    Ok(())
}

/// Wire v3 is a compatible evolution of v2 under the subject's BACKWARD compatibility: on a
/// subject holding v2's schema (as an older detector left it) and v3's first form (tracks without
/// events), the detector registers v3 as the third version and publishes tracked frames framed
/// with it; one sink stores, from that one
/// topic, a v2 message framed with v2's id and the detector's v3 ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_registers_after_v2_and_the_sink_stores_both() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("regv3", 1).await?;
    let subject = format!("{topic}-value");
    registry().set_compatibility(&subject, "BACKWARD")?;
    let v2_schema = std::fs::read_to_string(repo_root().join("wire/schema/frame-v2.schema.json"))?;
    let v2_id = registry().register(&subject, &v2_schema)?;
    let mut v2 = serde_json::from_slice::<serde_json::Value>(&synthetic_frame("cam-0", 0, 2).to_json())?;
    v2["schema_version"] = 2.into();
    produce(&topic, [("cam-0", frame(v2_id, v2.to_string().as_bytes()))])?;
    // v3 as it was first registered, before its tracker carried the rules' events and before a
    // fleet's frames carried their epoch: both are compatible evolutions of it too.
    let mut first_v3: serde_json::Value = serde_json::from_str(wire::JSON_SCHEMA)?;
    first_v3["properties"]["tracker"]["properties"].as_object_mut().unwrap().remove("rules");
    first_v3["properties"].as_object_mut().unwrap().remove("epoch");
    let definitions = first_v3["definitions"].as_object_mut().unwrap();
    definitions.remove("event");
    definitions.remove("occupancy");
    let first_v3_id = registry().register(&subject, &first_v3.to_string())?;

    let out = detect_to_kafka(&sample("basketball1.png"), "court", &topic, &["--schema-registry", &registry_url(), "--track"])?;
    let v3_id = schema_id_in(&out.stderr).expect("a schema id in the log");
    assert!(v3_id != v2_id && v3_id != first_v3_id);
    assert_eq!(registry_get(&format!("/subjects/{subject}/versions"))?.trim(), "[1,2,3]", "v3 with events is the subject's third version");
    assert!(registry_get(&format!("/config/{subject}"))?.contains("BACKWARD"));
    let records = read_topic(&topic, Duration::from_secs(30))?;
    assert_eq!(records.len(), 2);
    let Envelope::Framed { schema_id, json } = Envelope::open(&records[1].payload)? else { panic!("not framed") };
    let tracked = wire::FrameMessage::from_json(json)?;
    assert_eq!((schema_id, tracked.schema_version), (v3_id, 3));
    let tracker = tracked.tracker.expect("--track: the frame's tracks");
    let tracks = &tracker.tracks;
    assert_eq!(tracks.iter().map(|t| (t.id, t.detection)).collect::<Vec<_>>(), [(1, Some(0)), (2, Some(1))], "{tracks:?}");
    // An image is a session of one frame: its message starts and ends both tracks.
    let events = tracker.rules.expect("the rules' output").events;
    let kinds: Vec<(&str, u64)> = events.iter().map(|e| (e.kind.as_str(), e.track)).collect();
    assert_eq!(kinds, [("track_start", 1), ("track_start", 2), ("track_end", 1), ("track_end", 2)], "{events:?}");

    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--schema-registry", &registry_url()])?;
    let mut conn = db.connect().await?;
    let done =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 2, Duration::from_secs(120)).await?;
    let log = sink.stop()?;
    assert_eq!(done, 2, "{log}");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT camera_id, (SELECT count(*) FROM detections d WHERE d.camera_id = f.camera_id) FROM frames f ORDER BY 1")
            .fetch_all(&mut conn)
            .await?;
    // Both messages stored (none dead-lettered), with their detections.
    assert_eq!(stored, [("cam-0".to_string(), 2), ("court".to_string(), 2)], "{log}");
    assert_eq!(log.matches("schema fetched from the registry").count(), 2, "both versions' schemas:\n{log}");
    Ok(())
}

/// The registry's address without its API path (Apicurio serves the Confluent-compatible API
/// under `/apis/ccompat/v7`), or a page of it that is no API at all: the detector says so at start
/// in one line, with the path to add, and exits 2 (the user's to fix), publishing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_url_without_its_api_path_is_refused_at_start() -> Result<()> {
    let topic = unique("regpath");
    create_topic(&topic, 1).await?;
    let api = registry_url();
    let base = api.strip_suffix("/apis/ccompat/v7").expect("Apicurio's ccompat API");
    for url in [base.to_string(), format!("{base}/apis")] {
        let out = run(
            std::process::Command::new(bin("detector")).arg("--source").arg(sample("basketball1.png")).args([
                "--model",
                model().to_str().unwrap(),
                "--topic",
                &topic,
                "--brokers",
                &brokers(),
                "--schema-registry",
                &url,
            ]),
            Duration::from_secs(120),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert_eq!(errors.len(), 1, "{url}: {stderr}");
        assert!(
            errors[0].contains("not a Confluent-compatible schema registry API") && errors[0].contains("/apis/ccompat/v7"),
            "{url}: {stderr}"
        );
    }
    assert_eq!(topic_size(&topic)?, 0, "nothing published");
    // The sink too, before it reads anything: with the base URL it once dead-lettered every
    // framed message as an unknown schema id.
    let db = TestDb::create("regpath").await?;
    migrate(&db.url)?;
    let (status, log) =
        SinkProcess::start(&db.url, &topic, &unique("group"), &["--schema-registry", base])?.wait_exit(Duration::from_secs(60))?;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(errors.len() == 1 && errors[0].contains("/apis/ccompat/v7"), "{log}");
    Ok(())
}

/// The detector sets the subject's compatibility only when the subject is new: a level an
/// operator gave the subject, before the first schema or after it, is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_compatibility_level_is_kept() -> Result<()> {
    let image = sample("basketball1.png");
    let compatibility = |subject: &str| -> Result<String> {
        let body: serde_json::Value = serde_json::from_str(&registry_get(&format!("/config/{subject}"))?)?;
        Ok(body["compatibilityLevel"].as_str().unwrap_or_default().to_string())
    };
    let args = ["--schema-registry", &registry_url()];

    // A new subject gets the detector's level; an operator lowers it; the next run keeps that.
    let topic = unique("regcompat");
    create_topic(&topic, 1).await?;
    let subject = format!("{topic}-value");
    detect_to_kafka(&image, "court", &topic, &args)?;
    assert_eq!(compatibility(&subject)?, "BACKWARD");
    registry().set_compatibility(&subject, "NONE")?;
    let again = detect_to_kafka(&image, "court", &topic, &args)?;
    assert_eq!(compatibility(&subject)?, "NONE", "{}", String::from_utf8_lossy(&again.stderr));

    // A level set for a subject before its first schema is kept too.
    let topic = unique("regpreset");
    create_topic(&topic, 1).await?;
    let subject = format!("{topic}-value");
    registry().set_compatibility(&subject, "FULL")?;
    let first = detect_to_kafka(&image, "court", &topic, &args)?;
    assert_eq!(compatibility(&subject)?, "FULL", "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(registry_get(&format!("/subjects/{subject}/versions"))?.trim(), "[1]");
    Ok(())
}
/// `Registry::probe`, what both services call at start: the real registry's API answers like
/// one; its base URL, or a page of it, is not a registry (the user's to fix, not retried); an
/// address where nothing listens is an outage (retried).
#[test]
fn the_probe_tells_a_registry_from_a_wrong_url_and_an_outage() {
    let api = registry_url();
    let base = api.strip_suffix("/apis/ccompat/v7").expect("Apicurio's ccompat API");
    assert!(registry().probe().is_ok());
    for wrong in [base.to_string(), format!("{base}/apis")] {
        let r = common::registry::Registry::new(&wrong, Duration::from_secs(10)).unwrap();
        match r.probe() {
            Err(e @ RegistryError::NotARegistry { .. }) => {
                assert!(!e.retryable());
                assert!(e.to_string().contains("/apis/ccompat/v7"), "{e}");
            }
            other => panic!("{wrong}: {other:?}"),
        }
    }
    let away = common::registry::Registry::new("http://127.0.0.1:9/apis/ccompat/v7", Duration::from_secs(5)).unwrap();
    assert!(matches!(away.probe(), Err(RegistryError::Unavailable { .. })));
}
