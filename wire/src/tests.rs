use serde_json::{json, Value};

use super::*;

fn sample() -> FrameMessage {
    FrameMessage {
        schema_version: 3,
        camera_id: "cam-1".into(),
        run_id: Uuid::parse_str("01937f5e-8a2b-7c3d-9e4f-a1b2c3d4e5f6").unwrap(),
        frame_seq: 7,
        captured_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z").unwrap().into(),
        pts_ms: 700,
        frame_width: 768,
        frame_height: 576,
        model: ModelInfo { name: "yolo11n-pose".into(), sha256: "062cd5417709".into(), keypoints: 17 },
        detections: vec![Detection {
            class: "person".into(),
            score: 0.9,
            bbox: BBox { x1: 1.0, y1: 2.0, x2: 30.0, y2: 80.0 },
            keypoints: Some(vec![[5.0, 6.0, 0.5]; 17]),
        }],
        tracker: Some(Tracker {
            session: Uuid::parse_str("01937f5e-8a2b-7c3d-9e4f-0000000000aa").unwrap(),
            tracks: vec![
                Track { id: 4, bbox: BBox { x1: 1.5, y1: 2.5, x2: 30.5, y2: 80.5 }, score: 0.9, detection: Some(0) },
                // Matched to a detection scoring below --conf, which the message does not carry.
                Track { id: 2, bbox: BBox { x1: 100.0, y1: 20.0, x2: 140.0, y2: 90.0 }, score: 0.2, detection: None },
            ],
            rules: Some(RulesOutput {
                version: 0x8f3a_0000_0000_00c1,
                events: vec![
                    event(analytics::EventKind::TrackStart, 4, "", 7),
                    Event { from_frame: Some(2), dwell_s: Some(0.3), ..event(analytics::EventKind::ZoneExit, 2, "queue", 5) },
                    Event {
                        from_frame: Some(3),
                        confirmed_frame: Some(7),
                        before: Some([10.0, 20.5]),
                        after: Some([10.0, 30.0]),
                        ..event(analytics::EventKind::LineIn, 2, "door", 4)
                    },
                ],
                occupancy: vec![Occupancy { zone: "queue".into(), second: 0, count: 1 }],
            }),
        }),
        epoch: Some(42),
    }
}

fn event(kind: analytics::EventKind, track: u64, rule: &str, frame: u64) -> Event {
    Event {
        kind,
        track,
        rule: rule.into(),
        frame,
        time: frame as f64 / 10.0,
        from_frame: None,
        confirmed_frame: None,
        dwell_s: None,
        before: None,
        after: None,
    }
}

fn sample_json() -> Value {
    serde_json::from_slice(&sample().to_json()).unwrap()
}

/// The sample as a v2 detector wrote it: no tracker.
fn sample_v2() -> Value {
    let mut v = sample_json();
    v["schema_version"] = 2.into();
    v.as_object_mut().unwrap().remove("tracker");
    v.as_object_mut().unwrap().remove("epoch");
    v
}

/// The sample as an older detector wrote it: no run id, no keypoint count, no tracker.
fn sample_v1() -> Value {
    let mut v = sample_v2();
    v["schema_version"] = 1.into();
    v.as_object_mut().unwrap().remove("run_id");
    v["model"].as_object_mut().unwrap().remove("keypoints");
    v
}

fn parse(v: &Value) -> Result<FrameMessage, WireError> {
    FrameMessage::from_json(v.to_string().as_bytes())
}

#[test]
fn round_trips_and_writes_milliseconds() {
    let m = sample();
    let json = m.to_json();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains("\"captured_at\":\"2026-11-22T10:00:00.123Z\""), "{text}");
    assert!(text.contains("\"run_id\":\"01937f5e-8a2b-7c3d-9e4f-a1b2c3d4e5f6\""), "{text}");
    assert!(text.contains("\"session\":\"01937f5e-8a2b-7c3d-9e4f-0000000000aa\""), "{text}");
    // A track without a detection leaves the field out.
    assert!(text.contains("\"score\":0.2}"), "{text}");
    assert_eq!(FrameMessage::from_json(&json).unwrap(), m);
    assert_eq!(FrameMessage::from_value(sample_json()).unwrap(), m);
    assert!(text.contains("\"version\":\"8f3a0000000000c1\""), "{text}");
    assert!(text.contains("{\"kind\":\"track_start\",\"track\":4,\"frame\":7,\"time\":0.7}"), "a track event has no rule: {text}");
}

#[test]
fn a_session_says_its_clock() {
    let at = DateTime::parse_from_rfc3339("2026-12-02T10:00:00.25Z").unwrap().with_timezone(&Utc);
    let live = Uuid::now_v7();
    let file = Uuid::new_v8([7; 16]);
    assert_eq!((Clock::of_session(live), Clock::of_session(file)), (Clock::Capture, Clock::Pts));
    assert_eq!(Clock::Pts.time(1500, at), 1.5);
    assert_eq!(Clock::Capture.time(1500, at), at.timestamp() as f64 + 0.25);
    // An event 2.5 s before a frame captured at `at` was captured 2.5 s before it.
    assert_eq!(captured_at_of(1.0, 3.5, at), at - chrono::Duration::milliseconds(2500));
}

#[test]
fn rules_output_past_the_bound_is_split_off_in_order() {
    let event = |track| Event {
        kind: analytics::EventKind::TrackStart,
        track: track + 1,
        rule: String::new(),
        frame: 1,
        time: 0.1,
        from_frame: None,
        confirmed_frame: None,
        dwell_s: None,
        before: None,
        after: None,
    };
    let second = |second| Occupancy { zone: "z".into(), second, count: 1 };
    let mut out =
        RulesOutput { version: 9, events: (0..MAX_EVENTS as u64 - 2).map(event).collect(), occupancy: (0..5).map(second).collect() };
    let rest = out.split_at_bound();
    assert_eq!((out.events.len(), out.occupancy.len(), out.len()), (MAX_EVENTS - 2, 2, MAX_EVENTS));
    assert_eq!((rest.version, rest.events.len(), &rest.occupancy), (9, 0, &(2..5).map(second).collect::<Vec<_>>()));
    // Carried into the next frame's output, before its own.
    let mut next = rest;
    next.append(RulesOutput { version: 9, events: vec![event(7)], occupancy: vec![second(5)] });
    assert_eq!(next.occupancy.iter().map(|o| o.second).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(next.split_at_bound().is_empty(), "within the bound");
    let mut many = RulesOutput { version: 9, events: (0..MAX_EVENTS as u64 + 3).map(event).collect(), occupancy: vec![second(0)] };
    let rest = many.split_at_bound();
    assert_eq!(
        (many.len(), rest.events.iter().map(|e| e.track).collect::<Vec<_>>(), rest.occupancy.len()),
        (MAX_EVENTS, (MAX_EVENTS as u64 + 1..MAX_EVENTS as u64 + 4).collect::<Vec<_>>(), 1)
    );
    let mut m = sample();
    m.tracker.as_mut().unwrap().rules = Some(many);
    let checked = parse(&serde_json::from_slice::<Value>(&m.to_json()).unwrap());
    assert!(checked.is_ok(), "a message at the bound is valid: {checked:?}");
}

#[test]
fn v1_messages_are_read_into_the_v1_run() {
    let m = parse(&sample_v1()).unwrap();
    assert_eq!((m.schema_version, m.run_id), (1, V1_RUN_ID));
    assert_eq!(m.model.keypoints, 17, "taken from the detections");
    assert_eq!(m.detections, sample().detections);
    // A v1 message without people has no keypoints to count.
    let mut v = sample_v1();
    v["detections"] = json!([]);
    assert_eq!(parse(&v).unwrap().model.keypoints, 0);
    // Written again, it is v3 of the nil run: only the sink's reading decides that.
    assert!(String::from_utf8(m.to_json()).unwrap().contains("\"schema_version\":3"));
}

#[test]
fn v2_messages_are_read_untracked_and_may_not_carry_tracks() {
    let m = parse(&sample_v2()).unwrap();
    assert_eq!((m.schema_version, m.tracker.as_ref()), (2, None));
    assert_eq!((m.run_id, &m.detections), (sample().run_id, &sample().detections));
    // v3's schema takes v2's messages as they are (the registry's BACKWARD), but not with tracks.
    let validator = jsonschema::validator_for(&serde_json::from_str(JSON_SCHEMA).unwrap()).unwrap();
    assert!(validator.is_valid(&sample_v2()));
    let mut v = sample_json();
    v["schema_version"] = 2.into();
    assert!(parse(&v).unwrap_err().to_string().contains("tracker: is not part of schema_version 2"));
    // An untracked v3 frame (a detector without --track) writes no tracker, and reads back as one.
    let untracked = FrameMessage { tracker: None, ..sample() };
    assert!(!String::from_utf8(untracked.to_json()).unwrap().contains("tracker"));
    assert_eq!(FrameMessage::from_json(&untracked.to_json()).unwrap(), untracked);
    // A track's detection may be null as well as absent.
    let mut v = sample_json();
    v["tracker"]["tracks"][1]["detection"] = Value::Null;
    assert_eq!(parse(&v).unwrap(), sample());
}

#[test]
fn each_version_has_its_own_required_fields() {
    for (version, mut v) in [(3, sample_json()), (2, sample_v2())] {
        v.as_object_mut().unwrap().remove("run_id");
        assert!(parse(&v).unwrap_err().to_string().contains(&format!("required in schema_version {version}")));
    }
    for (version, mut v) in [(3, sample_json()), (2, sample_v2())] {
        v["model"].as_object_mut().unwrap().remove("keypoints");
        assert!(parse(&v).unwrap_err().to_string().contains(&format!("required in schema_version {version}")));
    }
    let mut v = sample_v1();
    v["run_id"] = sample_json()["run_id"].clone();
    assert!(parse(&v).unwrap_err().to_string().contains("not part of schema_version 1"));
    let mut v = sample_json();
    v["schema_version"] = 4.into();
    assert!(matches!(parse(&v), Err(WireError::Version(4))));
    // Another version is named even when the rest does not parse either.
    let err = FrameMessage::from_json(br#"{"schema_version": 9}"#).unwrap_err();
    assert!(matches!(err, WireError::Version(9)), "{err}");
    assert!(matches!(FrameMessage::from_json(b"not json"), Err(WireError::Json(_))));
}

#[test]
fn v1_detections_agree_on_their_keypoint_count() {
    let mut v = sample_v1();
    let mut second = v["detections"][0].clone();
    second["keypoints"] = json!([[1.0, 2.0, 0.5]]);
    v["detections"].as_array_mut().unwrap().push(second);
    assert!(parse(&v).unwrap_err().to_string().contains("detections[1].keypoints"));
    let mut v = sample_v1();
    v["detections"][0]["keypoints"] = json!(vec![[1.0, 2.0, 0.5]; MAX_KEYPOINTS + 1]);
    assert!(parse(&v).unwrap_err().to_string().contains("model.keypoints"));
}

/// What a bound case changes (JSON pointer, new value), and whether the schema and the checks must
/// accept the result.
type Case = (&'static str, Vec<(&'static str, Value)>, bool, bool);

/// Every bound of the contract, just inside and just outside, through both the JSON Schema file
/// (as the registry holds it and the sink checks framed messages against it) and the Rust checks:
/// each case says what both must answer. They agree everywhere except the two rules JSON Schema
/// cannot state, which are marked.
#[test]
fn json_schema_and_checks_agree_on_every_bound() {
    let schema: Value = serde_json::from_str(JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    assert!(validator.is_valid(&sample_json()));

    let text = |n: usize, c: char| Value::String(std::iter::repeat_n(c, n).collect());
    let kps = |n: usize| json!(vec![[1.0, 2.0, 0.5]; n]);
    let det =
        |n_kps: usize| json!({"class": "person", "score": 0.5, "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}, "keypoints": kps(n_kps)});
    let dets = |n: usize| json!(vec![det(17); n]);
    let track = |id: u64| json!({"id": id, "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}, "score": 0.5});
    let tracks = |n: u64| json!((1..=n).map(track).collect::<Vec<_>>());
    let events = |n: u64| json!((1..=n).map(|t| json!({"kind": "track_start", "track": t, "frame": 7, "time": 0.7})).collect::<Vec<_>>());
    let max_kps_model = json!({"name": "m", "sha256": "0123abcd", "keypoints": MAX_KEYPOINTS});
    let i64_max = json!(i64::MAX);
    let past_i64 = json!(i64::MAX as u64 + 1);
    // (what changes, schema says valid, checks say valid)
    let cases: Vec<Case> = vec![
        ("camera_id at 128 characters", vec![("/camera_id", text(MAX_LABEL_CHARS, 'c'))], true, true),
        ("camera_id at 129 characters", vec![("/camera_id", text(MAX_LABEL_CHARS + 1, 'c'))], false, false),
        ("camera_id of 128 two-byte characters", vec![("/camera_id", text(MAX_LABEL_CHARS, 'é'))], true, true),
        ("camera_id empty", vec![("/camera_id", json!(""))], false, false),
        ("camera_id with NUL", vec![("/camera_id", json!("a\u{0}b"))], false, false),
        ("camera_id with a C1 control", vec![("/camera_id", json!("a\u{85}b"))], false, false),
        ("camera_id with a no-break space", vec![("/camera_id", json!("a\u{a0}b"))], true, true),
        ("model.name at 129 characters", vec![("/model/name", text(MAX_LABEL_CHARS + 1, 'm'))], false, false),
        ("model.name with a tab", vec![("/model/name", json!("a\tb"))], false, false),
        ("class at 128 characters", vec![("/detections/0/class", text(MAX_LABEL_CHARS, 'k'))], true, true),
        ("class at 129 characters", vec![("/detections/0/class", text(MAX_LABEL_CHARS + 1, 'k'))], false, false),
        ("run_id uppercase", vec![("/run_id", json!("01937F5E-8A2B-7C3D-9E4F-A1B2C3D4E5F6"))], false, false),
        ("run_id without hyphens", vec![("/run_id", json!("01937f5e8a2b7c3d9e4fa1b2c3d4e5f6"))], false, false),
        ("run_id nil (v1's)", vec![("/run_id", json!("00000000-0000-0000-0000-000000000000"))], false, false),
        ("run_id braced", vec![("/run_id", json!("{01937f5e-8a2b-7c3d-9e4f-a1b2c3d4e5f6}"))], false, false),
        ("frame_seq at 2^63 - 1", vec![("/frame_seq", i64_max.clone())], true, true),
        ("frame_seq at 2^63", vec![("/frame_seq", past_i64.clone())], false, false),
        ("frame_seq negative", vec![("/frame_seq", json!(-1))], false, false),
        ("epoch at 2^63 - 1", vec![("/epoch", i64_max.clone())], true, true),
        ("epoch at 2^63", vec![("/epoch", past_i64.clone())], false, false),
        ("epoch negative", vec![("/epoch", json!(-1))], false, false),
        ("pts_ms at -2^63", vec![("/pts_ms", json!(i64::MIN))], true, true),
        ("pts_ms at 2^63", vec![("/pts_ms", past_i64.clone())], false, false),
        ("frame_width 0", vec![("/frame_width", json!(0))], false, false),
        ("frame_width 1", vec![("/frame_width", json!(1))], true, true),
        ("frame_height at 2^31 - 1", vec![("/frame_height", json!(i32::MAX))], true, true),
        ("frame_height at 2^31", vec![("/frame_height", json!(i32::MAX as u64 + 1))], false, false),
        ("sha256 of 7 digits", vec![("/model/sha256", json!("0123456"))], false, false),
        ("sha256 of 8 digits", vec![("/model/sha256", json!("01234567"))], true, true),
        ("sha256 of 64 digits", vec![("/model/sha256", text(64, 'a'))], true, true),
        ("sha256 of 65 digits", vec![("/model/sha256", text(65, 'a'))], false, false),
        ("sha256 uppercase", vec![("/model/sha256", json!("062CD541"))], false, false),
        ("score 0", vec![("/detections/0/score", json!(0.0))], true, true),
        ("score 1", vec![("/detections/0/score", json!(1.0))], true, true),
        ("score above 1", vec![("/detections/0/score", json!(1.001))], false, false),
        ("score below 0", vec![("/detections/0/score", json!(-0.001))], false, false),
        ("300 detections", vec![("/detections", dets(MAX_DETECTIONS))], true, true),
        ("301 detections", vec![("/detections", dets(MAX_DETECTIONS + 1))], false, false),
        ("no detections", vec![("/detections", json!([])), ("/tracker/tracks/0/detection", Value::Null)], true, true),
        (
            "133 keypoints, as the model says",
            vec![("/model", max_kps_model.clone()), ("/detections", json!([det(MAX_KEYPOINTS)]))],
            true,
            true,
        ),
        (
            "134 keypoints",
            vec![("/model/keypoints", json!(MAX_KEYPOINTS + 1)), ("/detections", json!([det(MAX_KEYPOINTS + 1)]))],
            false,
            false,
        ),
        ("10,000 keypoints", vec![("/detections", json!([det(10_000)]))], false, false),
        (
            "a model with 134 keypoints and nobody in view",
            vec![("/model/keypoints", json!(MAX_KEYPOINTS + 1)), ("/detections", json!([]))],
            false,
            false,
        ),
        ("an empty keypoint list", vec![("/model/keypoints", json!(0)), ("/detections/0/keypoints", json!([]))], false, false),
        ("a keypoint of two numbers", vec![("/detections/0/keypoints/0", json!([1.0, 2.0]))], false, false),
        ("an unknown field", vec![("/extra", json!(1))], false, false),
        ("an unknown model field", vec![("/model/extra", json!(1))], false, false),
        ("schema_version 1 with v2's fields", vec![("/schema_version", json!(1))], false, false),
        ("schema_version 4", vec![("/schema_version", json!(4))], false, false),
        ("session uppercase", vec![("/tracker/session", json!("01937F5E-8A2B-7C3D-9E4F-0000000000AA"))], false, false),
        ("session nil", vec![("/tracker/session", json!("00000000-0000-0000-0000-000000000000"))], false, false),
        ("a tracker without a session", vec![("/tracker", json!({"tracks": []}))], false, false),
        ("a tracker with no tracks", vec![("/tracker/tracks", json!([]))], true, true),
        ("an unknown tracker field", vec![("/tracker/extra", json!(1))], false, false),
        ("an unknown track field", vec![("/tracker/tracks/0/extra", json!(1))], false, false),
        ("track id 0", vec![("/tracker/tracks/0/id", json!(0))], false, false),
        ("track id 1", vec![("/tracker/tracks/0/id", json!(1))], true, true),
        ("track id at 2^63 - 1", vec![("/tracker/tracks/0/id", i64_max.clone())], true, true),
        ("track id at 2^63", vec![("/tracker/tracks/0/id", past_i64.clone())], false, false),
        ("track score above 1", vec![("/tracker/tracks/0/score", json!(1.001))], false, false),
        ("track score below 0", vec![("/tracker/tracks/0/score", json!(-0.001))], false, false),
        ("track score 1", vec![("/tracker/tracks/0/score", json!(1.0))], true, true),
        ("track detection -1", vec![("/tracker/tracks/0/detection", json!(-1))], false, false),
        ("track detection 300", vec![("/tracker/tracks/0/detection", json!(MAX_DETECTIONS))], false, false),
        ("track detection a string", vec![("/tracker/tracks/0/detection", json!("0"))], false, false),
        ("300 tracks", vec![("/tracker/tracks", tracks(MAX_DETECTIONS as u64))], true, true),
        ("301 tracks", vec![("/tracker/tracks", tracks(MAX_DETECTIONS as u64 + 1))], false, false),
        ("no rules", vec![("/tracker", json!({"session": sample_json()["tracker"]["session"], "tracks": []}))], true, true),
        ("rules that report nothing", vec![("/tracker/rules/events", json!([])), ("/tracker/rules/occupancy", json!([]))], true, true),
        ("a rule version of 15 digits", vec![("/tracker/rules/version", json!("8f3a0000000000c"))], false, false),
        ("a rule version uppercase", vec![("/tracker/rules/version", json!("8F3A0000000000C1"))], false, false),
        ("an unknown rules field", vec![("/tracker/rules/extra", json!(1))], false, false),
        ("an unknown event field", vec![("/tracker/rules/events/0/extra", json!(1))], false, false),
        ("an unknown event kind", vec![("/tracker/rules/events/0/kind", json!("loiter"))], false, false),
        ("event track 0", vec![("/tracker/rules/events/0/track", json!(0))], false, false),
        ("event track at 2^63", vec![("/tracker/rules/events/0/track", past_i64.clone())], false, false),
        ("an event at the message's frame", vec![("/tracker/rules/events/1/frame", json!(7))], true, true),
        ("a dwell below 0", vec![("/tracker/rules/events/1/dwell_s", json!(-0.1))], false, false),
        ("a rule of 129 characters", vec![("/tracker/rules/events/1/rule", text(MAX_LABEL_CHARS + 1, 'z'))], false, false),
        ("a rule with NUL", vec![("/tracker/rules/events/1/rule", json!("a\u{0}b"))], false, false),
        ("a crossing point of 3 numbers", vec![("/tracker/rules/events/2/after", json!([1.0, 2.0, 3.0]))], false, false),
        ("occupancy of a zone with a tab", vec![("/tracker/rules/occupancy/0/zone", json!("a\tb"))], false, false),
        ("occupancy count at 2^31", vec![("/tracker/rules/occupancy/0/count", json!(i32::MAX as u64 + 1))], false, false),
        ("occupancy count negative", vec![("/tracker/rules/occupancy/0/count", json!(-1))], false, false),
        ("3000 events", vec![("/tracker/rules/events", events(3000)), ("/tracker/rules/occupancy", json!([]))], true, true),
        ("3001 events", vec![("/tracker/rules/events", events(3001)), ("/tracker/rules/occupancy", json!([]))], false, false),
        // Rules JSON Schema cannot state (they compare fields), or that the registry would not take
        // as a compatible change of v2's schema (a condition on schema_version at the root).
        ("track detection 299 of 1 detection", vec![("/tracker/tracks/0/detection", json!(MAX_DETECTIONS - 1))], true, false),
        ("track detection 1 of 1 detection", vec![("/tracker/tracks/0/detection", json!(1))], true, false),
        ("two tracks on one detection", vec![("/tracker/tracks/1/detection", json!(0))], true, false),
        ("two tracks of one id", vec![("/tracker/tracks/1/id", json!(4))], true, false),
        ("a track box with x2 < x1", vec![("/tracker/tracks/0/bbox/x2", json!(-5.0))], true, false),
        ("a track box with y2 < y1", vec![("/tracker/tracks/0/bbox/y2", json!(-5.0))], true, false),
        ("schema_version 2 with a tracker", vec![("/schema_version", json!(2))], true, false),
        ("an event after the message's frame", vec![("/tracker/rules/events/1/frame", json!(8))], true, false),
        ("a crossing confirmed after the message's frame", vec![("/tracker/rules/events/2/confirmed_frame", json!(8))], true, false),
        ("an exit entered after it", vec![("/tracker/rules/events/1/from_frame", json!(6))], true, false),
        ("a track event naming a rule", vec![("/tracker/rules/events/0/rule", json!("door"))], true, false),
        ("a zone exit without its dwell", vec![("/tracker/rules/events/1/dwell_s", Value::Null)], false, false),
        (
            "a crossing without its points",
            vec![(
                "/tracker/rules/events/2",
                json!({"kind": "line_out", "track": 2, "rule": "door", "frame": 4, "time": 0.4, "from_frame": 3, "confirmed_frame": 7}),
            )],
            true,
            false,
        ),
        ("3000 events and a sample", vec![("/tracker/rules/events", events(3000))], true, false),
        // JSON Schema cannot compare two fields: only the checks can.
        ("18 keypoints for a 17-keypoint model", vec![("/detections/0/keypoints", kps(18))], true, false),
        ("a box with x2 < x1", vec![("/detections/0/bbox/x2", json!(-5.0))], true, false),
    ];
    let mut wrong = Vec::new();
    for (what, changes, schema_ok, checks_ok) in cases {
        let mut v = sample_json();
        for (pointer, value) in changes {
            match v.pointer_mut(pointer) {
                Some(slot) => *slot = value,
                None => {
                    let (parent, key) = pointer.rsplit_once('/').unwrap();
                    v.pointer_mut(if parent.is_empty() { "" } else { parent }).unwrap()[key] = value;
                }
            }
        }
        let got = (validator.is_valid(&v), parse(&v).is_ok());
        if got != (schema_ok, checks_ok) {
            wrong.push(format!("{what}: schema/checks said {got:?}, expected {:?}; checks: {:?}", (schema_ok, checks_ok), parse(&v).err()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The schema file's bounds are this crate's constants, and it names the fields the type writes.
#[test]
fn json_schema_matches_the_type() {
    use analytics::EventKind::*;
    let schema: Value = serde_json::from_str(JSON_SCHEMA).unwrap();
    let msg = sample_json();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&schema["properties"]), keys(&msg));
    let mut required: Vec<String> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    required.sort();
    assert_eq!(
        required,
        keys(&msg).into_iter().filter(|k| k != "tracker" && k != "epoch").collect::<Vec<_>>(),
        "all but the tracker and the epoch"
    );
    assert_eq!(schema["properties"]["epoch"]["maximum"], json!(i64::MAX));
    assert_eq!(keys(&schema["properties"]["model"]["properties"]), keys(&msg["model"]));
    assert_eq!(keys(&schema["definitions"]["detection"]["properties"]), keys(&msg["detections"][0]));
    assert_eq!(schema["properties"]["schema_version"]["enum"], json!([2, SCHEMA_VERSION]), "v2's messages are v3's too");
    let tracker = &schema["properties"]["tracker"];
    assert_eq!(keys(&tracker["properties"]), keys(&msg["tracker"]));
    assert_eq!(keys(&schema["definitions"]["track"]["properties"]), keys(&msg["tracker"]["tracks"][0]));
    assert_eq!(tracker["properties"]["tracks"]["maxItems"], MAX_DETECTIONS);
    assert_eq!(schema["definitions"]["track"]["properties"]["detection"]["maximum"], MAX_DETECTIONS - 1);
    assert_eq!(tracker["properties"]["session"]["not"]["const"], Uuid::nil().to_string());
    let rules = &tracker["properties"]["rules"];
    assert_eq!(keys(&rules["properties"]), keys(&msg["tracker"]["rules"]));
    // The sample's events together (a zone exit, a crossing, ...) use every field.
    let mut event_keys: Vec<String> = msg["tracker"]["rules"]["events"].as_array().unwrap().iter().flat_map(keys).collect();
    event_keys.sort();
    event_keys.dedup();
    assert_eq!(keys(&schema["definitions"]["event"]["properties"]), event_keys);
    assert_eq!(keys(&schema["definitions"]["occupancy"]["properties"]), keys(&msg["tracker"]["rules"]["occupancy"][0]));
    assert_eq!(rules["properties"]["events"]["maxItems"], MAX_EVENTS);
    let kinds: Vec<Value> = [TrackStart, TrackEnd, ZoneEnter, ZoneExit, LineIn, LineOut].iter().map(|k| json!(k.as_str())).collect();
    assert_eq!(schema["definitions"]["event"]["properties"]["kind"]["enum"], json!(kinds));
    let p = &schema["properties"];
    assert_eq!(p["detections"]["maxItems"], MAX_DETECTIONS);
    assert_eq!(p["model"]["properties"]["keypoints"]["maximum"], MAX_KEYPOINTS);
    assert_eq!(schema["definitions"]["detection"]["properties"]["keypoints"]["maxItems"], MAX_KEYPOINTS);
    for label in [&p["camera_id"], &p["model"]["properties"]["name"], &schema["definitions"]["detection"]["properties"]["class"]] {
        assert_eq!(label["maxLength"], MAX_LABEL_CHARS);
    }
    assert_eq!(p["run_id"]["not"]["const"], V1_RUN_ID.to_string());
}

#[test]
fn people_are_the_person_class_only() {
    let mut m = sample();
    let car = Detection { class: "car".into(), keypoints: None, ..m.detections[0].clone() };
    m.detections.extend([car, m.detections[0].clone()]);
    assert_eq!(m.people(), 2);
    m.detections.clear();
    assert_eq!(m.people(), 0);
}
