"""The detector's tracks against Ultralytics' (tests/reference/tracks/*.csv), with py-motmetrics.

Reads the reference's CSV (scripts/reference_tracks.py: one row per detection fed to the tracker,
with its track id and Kalman box when it was tracked) and the detector's JSON lines (`--track
--output stdout`), and prints one JSON object of figures:

- idf1, id_switches, mota, matches, false_positives, misses: motmetrics, the reference's tracks as
  ground truth and the detector's as hypotheses, matched per frame on box IoU >= 0.5 (distance
  1 - IoU < 0.5) of the Kalman boxes;
- same_id: the share of (frame, track) pairs, each one tracked detection of either side, where the
  other side has a track on the same box with the same id (a switch, a miss and an extra track
  each count as one pair that differs);
- max_box_diff_px: the largest difference of a corner coordinate over the pairs matched.

  track_metrics.py REFERENCE_CSV SCENARIO DETECTOR_JSONL
"""

import json
import sys
from collections import defaultdict

import motmetrics as mm
import numpy as np


def reference(path, scenario):
    """Per frame: {id: (x1, y1, x2, y2)} of the reference's tracks, and the frame count."""
    frames, count = defaultdict(dict), None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# frames "):
                name, n = line[len("# frames "):].rsplit(" ", 1)
                if name == scenario:
                    count = int(n)
                continue
            if line.startswith("#") or line.startswith("scenario,"):
                continue
            c = line.split(",")
            if c[0] != scenario or c[9] == "":
                continue
            frames[int(c[1])][int(c[9])] = tuple(float(v) for v in c[10:14])
    if count is None:
        sys.exit(f"{path}: no scenario {scenario}")
    return frames, count


def detector(path):
    """Per frame_seq: {id: (x1, y1, x2, y2)} of the detector's tracks."""
    frames = {}
    with open(path) as f:
        for line in f:
            msg = json.loads(line)
            tracks = msg["tracker"]["tracks"]
            b = lambda t: (t["bbox"]["x1"], t["bbox"]["y1"], t["bbox"]["x2"], t["bbox"]["y2"])
            frames[msg["frame_seq"]] = {t["id"]: b(t) for t in tracks}
    return frames


def xywh(boxes):
    return np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes]).reshape(-1, 4)


def main():
    ref_path, scenario, det_path = sys.argv[1:4]
    ref, count = reference(ref_path, scenario)
    det = detector(det_path)
    if sorted(det) != list(range(count)):
        sys.exit(f"the detector's frames are not 0..{count}: {len(det)} frames")
    acc = mm.MOTAccumulator(auto_id=False)
    for f in range(count):
        r, d = ref.get(f, {}), det[f]
        dist = mm.distances.iou_matrix(xywh(r.values()), xywh(d.values()), max_iou=0.5)
        acc.update(list(r), list(d), dist, frameid=f)
    summary = mm.metrics.create().compute(
        acc, metrics=["idf1", "num_switches", "mota", "num_matches", "num_false_positives", "num_misses"], name="t"
    )
    row = summary.loc["t"]
    events = acc.mot_events
    pairs = events[events.Type.isin(["MATCH", "SWITCH", "FP", "MISS"])]
    matched = events[events.Type.isin(["MATCH", "SWITCH"])]
    same = int((matched.OId == matched.HId).sum())
    max_diff = 0.0
    for (f, _), e in matched.iterrows():
        a, b = ref[f][e.OId], det[f][e.HId]
        max_diff = max(max_diff, max(abs(x - y) for x, y in zip(a, b)))
    print(
        json.dumps(
            {
                "frames": count,
                "reference_tracks": sum(len(v) for v in ref.values()),
                "detector_tracks": sum(len(v) for v in det.values()),
                "idf1": float(row.idf1),
                "id_switches": int(row.num_switches),
                "mota": float(row.mota),
                "matches": int(row.num_matches),
                "false_positives": int(row.num_false_positives),
                "misses": int(row.num_misses),
                "same_id": same / max(len(pairs), 1),
                "pairs": len(pairs),
                "max_box_diff_px": max_diff,
                "motmetrics": mm.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
