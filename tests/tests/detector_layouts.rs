//! Output layouts through the real detector and ONNX Runtime, with the synthetic models of
//! tests/models (scripts/make_test_models.py): each outputs a known tensor, so the detections are
//! known exactly. basketball1.png (640x480) into their 320x320 input: gain 0.5, 40 px of padding
//! above and below, so an input point (x, y) is the source point (2x, 2(y - 40)).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;
use wire::FrameMessage;

fn detect(model: &str, extra: &[&str]) -> Result<(std::process::Output, Vec<FrameMessage>)> {
    let out = run(
        Command::new(bin("detector"))
            .arg("--source")
            .arg(sample("basketball1.png"))
            .arg("--model")
            .arg(repo_root().join("tests/models").join(model))
            .args(["--output", "stdout"])
            .args(extra),
        Duration::from_secs(60),
    )?;
    let msgs = std::str::from_utf8(&out.stdout)?.lines().map(|l| FrameMessage::from_json(l.as_bytes())).collect::<Result<_, _>>()?;
    Ok((out, msgs))
}

fn boxes(m: &FrameMessage) -> Vec<(String, f32, [f32; 4])> {
    m.detections.iter().map(|d| (d.class.clone(), d.score, [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2])).collect()
}

fn assert_close(got: &[(String, f32, [f32; 4])], want: &[(&str, f32, [f32; 4])]) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((gc, gs, gb), (wc, ws, wb)) in got.iter().zip(want) {
        assert_eq!(gc, wc);
        assert!((gs - ws).abs() < 1e-5, "{got:?}");
        for (g, w) in gb.iter().zip(wb) {
            assert!((g - w).abs() < 1e-3, "{got:?} vs {want:?}");
        }
    }
}

#[test]
fn yolov5_layout() -> Result<()> {
    let (out, msgs) = detect("yolov5-layout.onnx", &[])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // person 0.9 x 0.8 at input (90, 80)-(110, 120); its overlapping twin is suppressed; the car
    // is not a person; the last row's objectness is under the threshold.
    assert_close(&boxes(&msgs[0]), &[("person", 0.72, [180.0, 80.0, 220.0, 160.0])]);
    let (_, msgs) = detect("yolov5-layout.onnx", &["--classes", "person,car"])?;
    assert_close(&boxes(&msgs[0]), &[("car", 0.81, [490.0, 410.0, 510.0, 430.0]), ("person", 0.72, [180.0, 80.0, 220.0, 160.0])]);
    Ok(())
}

#[test]
fn end_to_end_layout() -> Result<()> {
    let (out, msgs) = detect("end2end-layout.onnx", &["--classes", "person,car"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Taken as the model gives them (no NMS), best first; the car's bottom clips to the frame.
    assert_close(
        &boxes(&msgs[0]),
        &[
            ("person", 0.9, [48.0, 40.0, 128.0, 200.0]),
            ("car", 0.8, [400.0, 320.0, 520.0, 480.0]),
            ("person", 0.5, [40.0, 40.0, 120.0, 200.0]),
        ],
    );
    Ok(())
}

#[test]
fn unknown_layout_is_a_clear_error() -> Result<()> {
    let (out, msgs) = detect("unknown-layout.onnx", &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(msgs.is_empty());
    assert!(err.contains("unsupported output layout [1, 3, 3]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

/// People are the model's `person` class, counted when --classes keeps it: a detector that keeps
/// none counts no one, and says so at start; with a crowd alert, which could then never fire, it
/// is refused at start in one line (exit 2).
#[test]
fn people_are_the_models_person_class_kept_by_classes() -> Result<()> {
    let (out, msgs) = detect("yolov5-layout.onnx", &["--classes", "car", "--crowd-people", "0", "--metrics-addr", "127.0.0.1:0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(msgs.is_empty());
    let errors: Vec<&str> = err.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("--crowd-people") && errors[0].contains("\"person\"") && errors[0].contains("--classes"), "{err}");

    let (out, msgs) = detect("yolov5-layout.onnx", &["--classes", "car"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(boxes(&msgs[0]).iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), ["car"]);
    assert!(err.lines().any(|l| l.contains(" WARN ") && l.contains("people are not counted")), "{err}");
    Ok(())
}
