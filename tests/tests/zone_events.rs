//! Zone and line events end to end, on the real model, broker and database: `detector --track`
//! with a camera's rules (tests/reference/zones/vtest.avi.rules.toml, under `[camera.rules]`)
//! on 10 s of vtest.avi, stored by the sink. Every track and presence the session opened is
//! closed when the file ends; a dwell is its frames' time apart; the views agree with the events;
//! the file processed again stores nothing new; `sink recount` with the same rules stores exactly
//! the live events and occupancy again (deleted first, compared column for column); with a zone
//! moved it stores another rule version beside the live one, which stays as it was.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(conn).await?)
}

/// Every column of both tables, in one order, as text: what a recount must reproduce.
const EVENTS: &str = "SELECT camera_id, run_id, tracker_session, rule_version, track_id, rule, kind, frame_seq, captured_at,
    stream_time, from_frame, confirmed_frame, dwell_s, before_x, before_y, after_x, after_y FROM";
const OCCUPANCY: &str = "SELECT camera_id, run_id, tracker_session, rule_version, zone, second, captured_at, people FROM";

/// Rows of one table not in the other, both ways.
async fn differ(conn: &mut PgConnection, select: &str, a: &str, b: &str) -> Result<i64> {
    count(
        conn,
        &format!("SELECT count(*) FROM (({select} {a} EXCEPT ALL {select} {b}) UNION ALL ({select} {b} EXCEPT ALL {select} {a})) d"),
    )
    .await
}

fn recount(db_url: &str, rules: &std::path::Path) -> Result<String> {
    let out = run(
        Command::new(bin("sink")).args(["recount", "--camera", "hall", "--rules"]).arg(rules).env("DATABASE_URL", db_url),
        Duration::from_secs(300),
    )?;
    ensure!(out.status.success(), "sink recount failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

fn field(report: &str, key: &str) -> Option<i64> {
    report.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_are_stored_once_and_a_recount_reproduces_them() -> Result<()> {
    let dir = TempDir::new("zones")?;
    let clip = dir.join("hall.mp4");
    h264_clip(&sample("vtest.avi"), &clip, 0, Some(10))?;
    let rules_file = repo_root().join("tests/reference/zones/vtest.avi.rules.toml");
    let rules = std::fs::read_to_string(&rules_file)?;
    // The recount's rules file is a camera's [camera.rules] on its own.
    let cameras = dir.join("cameras.toml");
    std::fs::write(
        &cameras,
        format!(
            "[[camera]]\nid = \"hall\"\nsource = \"{}\"\n[camera.rules]\n{}",
            clip.display(),
            rules.replace("[[zones]]", "[[camera.rules.zones]]").replace("[[lines]]", "[[camera.rules.lines]]")
        ),
    )?;
    let (topic, db) = fresh_topic_and_db("zones", 1).await?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let mut conn = db.connect().await?;
    let detect = || -> Result<()> {
        let out = run(
            Command::new(bin("detector")).arg("--cameras").arg(&cameras).arg("--model").arg(model()).args([
                "--track",
                "--topic",
                &topic,
                "--brokers",
                &brokers(),
            ]),
            Duration::from_secs(900),
        )?;
        ensure!(out.status.success(), "detector failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    detect()?;
    wait_accounted(&mut conn, &topic).await?;

    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM zone_events GROUP BY kind ORDER BY kind").fetch_all(&mut conn).await?;
    let of = |k: &str| kinds.iter().find(|(kind, _)| kind == k).map_or(0, |(_, n)| *n);
    ensure!(of("zone_enter") > 0 && of("line_in") + of("line_out") > 0, "people enter zones and cross lines: {kinds:?}");
    // The file's end closed the session: every track ended, every presence exited.
    let tracks = count(&mut conn, "SELECT count(*) FROM tracks").await?;
    assert_eq!((of("track_start"), of("track_end")), (tracks, tracks), "{kinds:?}");
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM (SELECT rule, track_id, count(*) FILTER (WHERE kind = 'zone_enter') - count(*) FILTER (WHERE kind = 'zone_exit') AS open FROM zone_events GROUP BY 1, 2) o WHERE open <> 0").await?,
        0,
        "each track's entries into a zone are each exited"
    );
    assert_eq!(count(&mut conn, "SELECT count(DISTINCT (run_id, tracker_session, rule_version)) FROM zone_events").await?, 1);
    // Events name tracks of their session, and a dwell is its frames' pts apart.
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM zone_events e WHERE NOT EXISTS (SELECT 1 FROM tracks t WHERE (t.camera_id, t.run_id, t.tracker_session, t.track_id) = (e.camera_id, e.run_id, e.tracker_session, e.track_id))").await?,
        0
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM zone_events e JOIN frames a ON (a.camera_id, a.run_id, a.frame_seq) = (e.camera_id, e.run_id, e.from_frame)
                          JOIN frames b ON (b.camera_id, b.run_id, b.frame_seq) = (e.camera_id, e.run_id, e.frame_seq)
                          WHERE e.kind = 'zone_exit' AND abs(e.dwell_s - (b.pts_ms - a.pts_ms) / 1000.0) < 1e-9").await?,
        of("zone_exit")
    );
    // Occupancy: each zone, each second of the file, never more than the tracks entered.
    let seconds = count(&mut conn, "SELECT count(DISTINCT second) FROM zone_occupancy").await?;
    assert!((10..=11).contains(&seconds), "{seconds} seconds sampled in 10 s");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM zone_occupancy").await?, seconds * 3, "3 zones");
    let stored = (
        count(&mut conn, "SELECT count(*) FROM zone_events").await?,
        count(&mut conn, "SELECT count(*) FROM zone_occupancy").await?,
        count(&mut conn, "SELECT coalesce(sum(people), 0)::bigint FROM zone_entries_per_hour('-infinity', 'infinity')").await?,
    );
    assert!(stored.2 > 0 && stored.2 <= of("zone_enter") + of("line_in") + of("line_out"), "{stored:?}");
    // The views: each track's zones visited are the zones it entered; each exit is a visit in
    // the dwell percentiles; people per minute by distinct track are at most the tracks.
    assert_eq!(
        count(&mut conn, "SELECT coalesce(sum(cardinality(zones)), 0)::bigint FROM track_zones").await?,
        count(&mut conn, "SELECT count(DISTINCT (track_id, rule)) FROM zone_events WHERE kind = 'zone_enter'").await?
    );
    assert_eq!(
        count(&mut conn, "SELECT coalesce(sum(visits), 0)::bigint FROM zone_dwell('-infinity', 'infinity')").await?,
        of("zone_exit")
    );
    let per_minute = count(&mut conn, "SELECT coalesce(max(people), 0) FROM tracked_people_per_minute('-infinity', 'infinity')").await?;
    assert!(per_minute > 0 && per_minute <= tracks, "{per_minute} people in a minute of {tracks} tracks");

    // The same file again: the same run and session, the same events: nothing new.
    detect()?;
    wait_accounted(&mut conn, &topic).await?;
    let log = sink.stop()?;
    assert_eq!(
        (
            count(&mut conn, "SELECT count(*) FROM zone_events").await?,
            count(&mut conn, "SELECT count(*) FROM zone_occupancy").await?,
            count(&mut conn, "SELECT coalesce(sum(people), 0)::bigint FROM zone_entries_per_hour('-infinity', 'infinity')").await?
        ),
        stored,
        "a replay stores nothing new"
    );
    assert!(log_field(&log, "progress", "replayed").is_some_and(|n| n > 0), "{log}");

    // A recount with the same rules reproduces the live rows exactly.
    for t in ["zone_events", "zone_occupancy"] {
        for sql in [format!("CREATE TABLE live_{t} AS SELECT * FROM {t}"), format!("DELETE FROM {t}")] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        }
    }
    let report = recount(&db.url, &rules_file)?;
    assert_eq!(field(&report, "new_events"), Some(stored.0), "{report}");
    assert_eq!(field(&report, "sessions"), Some(1), "{report}");
    assert_eq!(differ(&mut conn, EVENTS, "zone_events", "live_zone_events").await?, 0, "recounted events differ from the live ones");
    assert_eq!(differ(&mut conn, OCCUPANCY, "zone_occupancy", "live_zone_occupancy").await?, 0, "recounted occupancy differs");
    // Again: nothing new.
    assert_eq!(field(&recount(&db.url, &rules_file)?, "new_events"), Some(0));

    // A zone redrawn: its events under a new rule version, beside the live ones.
    let moved = dir.join("moved.toml");
    std::fs::write(&moved, rules.replace("[450, 280], [650, 280]", "[400, 280], [650, 280]"))?;
    ensure!(std::fs::read_to_string(&moved)? != rules, "the plaza zone's first corners are in the rules file");
    let report = recount(&db.url, &moved)?;
    assert!(field(&report, "new_events").is_some_and(|n| n > 0), "{report}");
    assert_eq!(count(&mut conn, "SELECT count(DISTINCT rule_version) FROM zone_events").await?, 2);
    let live_version = "(SELECT min(rule_version) FROM live_zone_events)";
    assert_eq!(
        differ(&mut conn, EVENTS, &format!("zone_events WHERE rule_version = {live_version}"), "live_zone_events").await?,
        0,
        "the live version's events stay as they were"
    );
    Ok(())
}

/// A detector on a live camera stopped (SIGTERM) and started again: each start is a tracker
/// session of its own, timed by capture time; each closes every track and presence it opened in
/// its last message; no event of one session names a track of the other; and the occupancy of a
/// second is per session, so a session that is gone never counts in the next one's seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_live_camera_closes_each_session_and_mixes_none() -> Result<()> {
    let dir = TempDir::new("livezones")?;
    let mp4 = dir.join("clip.mp4");
    h264_clip(&sample("vtest.avi"), &mp4, 0, Some(30))?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    // One zone over most of the frame, so that people are inside whenever the detector stops.
    let cameras = dir.join("cameras.toml");
    std::fs::write(
        &cameras,
        format!(
            "[[camera]]\nid = \"hall\"\nsource = \"rtsp://127.0.0.1:{port}/stream\"\nmax_fps = 5.0\n[camera.rules]\n\
             [[camera.rules.zones]]\nname = \"floor\"\npolygon = [[0, 100], [768, 100], [768, 576], [0, 576]]\n"
        ),
    )?;
    let (topic, db) = fresh_topic_and_db("livezones", 1).await?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let mut conn = db.connect().await?;
    let published = restarted_detector(&topic, 2, 20, || {
        let mut cmd = Command::new(bin("detector"));
        cmd.arg("--cameras").arg(&cameras).arg("--model").arg(model()).arg("--track").args(["--topic", &topic, "--brokers", &brokers()]);
        cmd
    })?;
    wait_accounted(&mut conn, &topic).await?;
    let log = sink.stop()?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, published, "{log}");
    let sessions: Vec<(uuid::Uuid, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT tracker_session,
                count(*) FILTER (WHERE kind = 'track_start'), count(*) FILTER (WHERE kind = 'track_end'),
                count(*) FILTER (WHERE kind = 'zone_enter'), count(*) FILTER (WHERE kind = 'zone_exit'),
                (SELECT count(*) FROM tracks t WHERE t.tracker_session = e.tracker_session)
         FROM zone_events e GROUP BY tracker_session ORDER BY min(captured_at)",
    )
    .fetch_all(&mut conn)
    .await?;
    assert_eq!(sessions.len(), 2, "a session per start: {sessions:?}");
    for (session, starts, ends, enters, exits, tracks) in &sessions {
        assert_eq!(session.get_version_num(), 7, "a live camera's session is new at each start");
        assert!(*tracks > 0 && *enters > 0, "{sessions:?}");
        assert_eq!((starts, ends, enters), (tracks, tracks, exits), "session {session} closed everything it opened: {sessions:?}");
    }
    // Each session's events name its own tracks, dated within its own frames.
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM zone_events e WHERE NOT EXISTS (SELECT 1 FROM frames f
             WHERE (f.camera_id, f.run_id, f.frame_seq, f.tracker_session) = (e.camera_id, e.run_id, e.frame_seq, e.tracker_session))"
        )
        .await?,
        0
    );
    // A live session's seconds are Unix seconds, sampled where its frames were captured.
    assert_eq!(count(&mut conn, "SELECT count(*) FROM zone_occupancy WHERE second <> floor(extract(epoch FROM captured_at))").await?, 0);
    // No second of one session counts people of the other.
    let occupied: Vec<(uuid::Uuid, i64, i64)> =
        sqlx::query_as("SELECT tracker_session, min(second), max(second) FROM zone_occupancy GROUP BY 1 ORDER BY 2")
            .fetch_all(&mut conn)
            .await?;
    assert_eq!(occupied.len(), 2);
    assert!(occupied[0].2 < occupied[1].1, "the sessions' seconds do not overlap: {occupied:?}");
    Ok(())
}
