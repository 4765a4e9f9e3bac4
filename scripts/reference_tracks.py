"""Reference tracks from Ultralytics' own ByteTrack, for the analytics crate's tracker tests.

Run by scripts/reference_tracks.sh (the virtualenv of reference_outputs.sh, plus lap==0.5.13):
    python reference_tracks.py --model models/yolo11n-pose.onnx --out DIR VIDEO

Ultralytics is used as a black box (AGPL-3.0: its source is not read or copied here):
- DIR/<video>.csv: `model.track(VIDEO, tracker="bytetrack.yaml", conf=0.1, iou=0.7, persist=True)`.
  The tracker object's `update` is wrapped at runtime to record what it was fed (the detections
  after NMS) and what it returned (ids, the Kalman boxes, the index of the detection each matched).
- DIR/synthetic.csv: hand-made scenarios (SCENARIOS below) fed to a fresh `BYTETracker` made from
  the same bytetrack.yaml, the way the docs show, recorded the same way.
- DIR/lapjv.csv: `lap.lapjv(cost, extend_cost=True, cost_limit=limit)` (the assignment the tracker
  uses; lap is BSD-2-Clause) on random small matrices of coarse costs, where ties are common:
  `rows,cols,limit,costs,x` with the costs row-major and x (the column of each row, -1 for none)
  space-separated.

CSV rows, one per detection fed to the tracker, in the order fed:
    scenario,frame,det,x1,y1,x2,y2,score,class,id,tx1,ty1,tx2,ty2
`det` is the detection's index in its frame; `id` and the tracker's box `tx1..ty2` are empty when
the tracker returned no track for it. Floats are float32 (what both sides compute with), written
as the shortest text that reads back as the same float32. Frames with no detection have no row;
`# frames <scenario> <n>` lines give each scenario's frame count (the tracker sees every frame).
"""

import argparse
import hashlib
import os
import sys

import numpy as np
import torch
import ultralytics
from ultralytics import YOLO
from ultralytics.engine.results import Boxes
from ultralytics.trackers.byte_tracker import BYTETracker
from ultralytics.utils import YAML, IterableSimpleNamespace
from ultralytics.utils.checks import check_yaml

import lap
import onnxruntime

TRACK = dict(tracker="bytetrack.yaml", conf=0.1, iou=0.7, persist=True, imgsz=640, device="cpu", verbose=False)
COLUMNS = "scenario,frame,det,x1,y1,x2,y2,score,class,id,tx1,ty1,tx2,ty2"


def f32(v):
    """The shortest decimal that reads back as this float32."""
    return str(np.float32(v))


def rows(scenario, frame, dets, tracks):
    """CSV rows of one frame: `dets` is [[x1, y1, x2, y2, score, class]] (float32), `tracks` what
    update returned: [x1, y1, x2, y2, id, score, class, det index] per track."""
    by_det = {int(t[7]): t for t in tracks}
    assert len(by_det) == len(tracks), "two tracks on one detection"
    out = []
    for i, d in enumerate(dets):
        cells = [scenario, str(frame), str(i), *map(f32, d[:5]), str(int(d[5]))]
        t = by_det.pop(i, None)
        cells += ["", "", "", "", ""] if t is None else [str(int(t[4])), *map(f32, t[:4])]
        out.append(",".join(cells))
    assert not by_det, f"tracks on no detection: {by_det}"
    return out


def record_video(model_path, video):
    """Runs model.track on the video; returns (frames, rows)."""
    calls = []
    update = BYTETracker.update

    def spy(self, results, *args, **kwargs):
        tracks = update(self, results, *args, **kwargs)
        dets = np.concatenate([results.xyxy, results.conf[:, None], results.cls[:, None]], axis=1)
        # A copy: model.track later clips the boxes it puts in its results to the image, in place.
        calls.append((dets.astype(np.float32), np.array(tracks, dtype=np.float32).reshape(-1, 8)))
        return tracks

    BYTETracker.update = spy
    try:
        model = YOLO(model_path, task="pose")
        frames = sum(1 for _ in model.track(video, stream=True, **TRACK))
    finally:
        BYTETracker.update = update
    assert len(calls) == frames, f"{len(calls)} tracker updates for {frames} frames"
    name = os.path.basename(video)
    return frames, [r for f, (d, t) in enumerate(calls) for r in rows(name, f, d, t)]


def tracker_config():
    return YAML.load(check_yaml("bytetrack.yaml"))


# Boxes 64 x 128 (aspect 0.5 exactly, so the Kalman box of a still track is exact in float32).
def box(x, y, w=64, h=128):
    return [x, y, x + w, y + h]


A, B, C = box(100, 100), box(400, 100), box(600, 300)
R = box(2000, 2000)  # far from the grid of `removed_list_cap`


def det(b, score=0.9, cls=0):
    return [*b, score, cls]


def grid_batch(k):
    """48 small boxes of batch k, none shared with another batch (k < 11)."""
    cells = [(c, r) for r in range(17) for c in range(32)][48 * k:48 * (k + 1)]
    return [det([24 * c, 32 * r, 24 * c + 20, 32 * r + 30]) for c, r in cells]


def removed_list_cap():
    frames = [[det(R)], [det(R)]] + [[]] * 31 + [[det(R)]]  # revived one frame late: its id is listed
    batches = {3 * k: k for k in range(11)}  # 11 batches of 48 tracks, 2 removal entries each
    for f in range(3 * 10 + 2 + 34):
        g = []
        for start, k in batches.items():
            if start <= f <= start + 1:
                g = grid_batch(k)
        frames.append([det(R)] + g)
    return frames + [[], [det(R)], [det(R)]]


SCENARIOS = {
    # B's track (id 2) fails to match on the next frame: its id is used up, C gets 3.
    "id_used_up": [[det(A)], [det(A), det(B)], [det(A)], [det(A), det(C)], [det(A), det(C)]],
    # Lost for 30 frames: kept (the buffer is 30 frames).
    "lost_30_frames": [[det(A)], [det(A)]] + [[]] * 30 + [[det(A)], [det(A)]],
    # Lost for 31 frames: removed, yet matched on the frame after its removal; lost again, it is
    # dropped at once (its id is in the removed list) and A comes back under a new id.
    "lost_31_frames": [[det(A)], [det(A)]] + [[]] * 31 + [[det(A)], [det(A)], [], [det(A)], [det(A)]],
    # Lost for 32 frames: gone; A starts a new track.
    "lost_32_frames": [[det(A)], [det(A)]] + [[]] * 32 + [[det(A)], [det(A)]],
    # The removed list keeps the newest 1000 entries: once R's entry is pushed out, R lost for a
    # frame is kept and found again under its id.
    "removed_list_cap": removed_list_cap(),
    # Two tracks on one box, then two detections on it: equal costs for both tracks.
    "tie_two_tracks": [[det(A), det(A)], [det(A, 0.9), det(A, 0.8)], [det(A, 0.8), det(A, 0.9)], [det(A), det(A)]],
    # One detection halfway between two tracks: equal costs.
    "tie_between_tracks": [[det(box(100, 100)), det(box(164, 100))]] * 2 + [[det(box(132, 100))]] * 2,
    # Second stage, IoU exactly 0.5: cost 1 - IoU = 0.5, the threshold itself.
    "cost_at_threshold": [[det(A)], [det(A)], [det(box(100, 100, 64, 64), 0.2)], [det(A)]],
    # First stage, IoU 0.5 and score 0.4: 1 - IoU * score = 0.8 in float32, which is above 0.8.
    "fused_cost_rounds_above_threshold": [[det(A)], [det(A)], [det(box(100, 100, 64, 64), 0.4)], [det(A)], [det(A)]],
    # Scores: 0.2 matches a tracked track in the second stage but starts none; 0.1 is not above
    # track_low_thresh; a lost track is not matched in the second stage; 0.25 is a first-stage score.
    "second_stage_scores": [[det(A)], [det(A)], [det(A, 0.2), det(B, 0.2)], [det(A, 0.1)], [det(A, 0.2)],
                            [det(A, 0.25)], [det(A, 0.25)]],
    # Two tracks on one box, one detection: one is matched, the other lost and, overlapping the
    # matched one (now tracked for longer), dropped; the second detection then starts a new track
    # instead of taking 2 back.
    "duplicate_lost_track": [[det(A), det(A)], [det(A)], [det(A, 0.9), det(A, 0.8)], [det(A, 0.9), det(A, 0.8)]],
    # Zero height (or width, or NaN) is no detection for the tracker: no id, no match.
    "zero_height": [[det([100, 300, 164, 300]), det(A)], [det(A), det([0, 50, 0, 90])], [det([100, 228, 164, 228])], [det(A)]],
}


def lapjv_cases(n=1000):
    """n matrices of costs in tenths, then n of five values only (ties everywhere)."""
    rng = np.random.default_rng(18)
    out = []
    for k in range(2 * n):
        if k < n:
            r, c = rng.integers(1, 7, 2)
            cost = np.round(rng.uniform(0, 1.2, (r, c)), 1)
            limit = float(rng.choice([0.5, 0.7, 0.8, round(float(rng.uniform(0.1, 1.5)), 2)]))
        else:
            r, c = rng.integers(1, 9, 2)
            cost = rng.choice([0.0, 0.2, 0.4, 0.6, 1.0], (r, c))
            limit = float(rng.choice([0.4, 0.8, 1.2]))
        _, x, _ = lap.lapjv(cost, extend_cost=True, cost_limit=limit)
        out.append(f"{r},{c},{limit!r},{' '.join(map(repr, cost.ravel().tolist()))},{' '.join(map(str, x.tolist()))}")
    return out


def record_synthetic():
    cfg = IterableSimpleNamespace(**tracker_config())
    out, frames = [], {}
    for name, scenario in SCENARIOS.items():
        tracker = BYTETracker(cfg)
        for f, dets in enumerate(scenario):
            d = torch.tensor(dets, dtype=torch.float32).reshape(-1, 6)
            tracks = tracker.update(Boxes(d, (576, 768)).cpu().numpy())
            out += rows(name, f, d.numpy(), np.asarray(tracks, dtype=np.float32).reshape(-1, 8))
        frames[name] = len(scenario)
    return frames, out


def write(path, header, frames, body):
    with open(path, "w") as f:
        for line in header:
            f.write(f"# {line}\n")
        for name, n in frames.items():
            f.write(f"# frames {name} {n}\n")
        f.write(COLUMNS + "\n")
        f.write("\n".join(body) + "\n")
    print(f"{path}: {len(body)} detections, {sum(r.split(',')[9] != '' for r in body)} tracked",
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("video")
    args = ap.parse_args()
    versions = {"ultralytics": ultralytics.__version__, "lap": lap.__version__,
                "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": sys.version.split()[0]}
    cfg = tracker_config()
    header = [f"versions {versions}", f"bytetrack.yaml {cfg}"]
    with open(os.path.join(args.out, "lapjv.csv"), "w") as f:
        f.write(f"# lap {lap.__version__}: lap.lapjv(cost, extend_cost=True, cost_limit=limit)\nrows,cols,limit,costs,x\n")
        f.write("\n".join(lapjv_cases()) + "\n")
    frames, body = record_synthetic()
    write(os.path.join(args.out, "synthetic.csv"), header + ["BYTETracker(bytetrack.yaml) fed SCENARIOS of scripts/reference_tracks.py"],
          frames, body)
    name = os.path.basename(args.video)
    sha = hashlib.sha256(open(args.model, "rb").read()).hexdigest()
    n, body = record_video(args.model, args.video)
    call = ", ".join(f"{k}={v!r}" for k, v in TRACK.items())
    write(os.path.join(args.out, name + ".csv"),
          header + [f"YOLO({os.path.basename(args.model)!r}, task='pose').track({name!r}, {call})",
                    f"model sha256 {sha}"], {name: n}, body)


if __name__ == "__main__":
    main()
