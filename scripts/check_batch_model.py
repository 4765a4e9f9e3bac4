"""Checks models/yolo11n-pose-batch.onnx against the static model it was made from, in ONNX Runtime.

Run by scripts/make_batch_model.sh --check (needs onnxruntime and opencv in the venv):
    python check_batch_model.py STATIC.onnx BATCH.onnx VIDEO [--rounds 3 --runs 10]
1. shapes ONNX Runtime reports and the metadata, 2. outputs of the batch model at batch 1, 2, 4, 8
against the static model run frame by frame (real frames, letterboxed as Ultralytics does),
3. time per frame at each batch size. Timings are medians after warm-up, repeated in rounds,
because on 2 cores anything else running (a cargo build) moves them a lot.
"""

import argparse
import os
import time

import cv2
import numpy as np
import onnxruntime as ort

from yolo_frames import ffmpeg_frames, letterbox, session, to_input


def frames(path, picks):
    """BGR frames number `picks` of a video, as the detector's OpenCV decodes them."""
    out = {}
    for i, f in enumerate(ffmpeg_frames(path)):
        if i in picks:
            out[i] = f
        if len(out) == len(picks):
            break
    return [out[i] for i in picks]


def per_frame_ms(sess, x, runs, warmup=3):
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append(time.perf_counter() - t0)
    # The minimum too: on a shared machine it is the closest to the uncontended time.
    return 1000 * float(np.median(t)) / len(x), 1000 * min(t) / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("static")
    ap.add_argument("batch")
    ap.add_argument("video")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, opencv {cv2.__version__}, intra_op_num_threads=2, ORT_ENABLE_ALL")
    s, b = session(a.static), session(a.batch)

    for name, sess in (("static", s), ("batch", b)):
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]
        print(f"{name}: input {i.name} {i.shape} {i.type}; output {o.name} {o.shape} {o.type}")
    ms, mb = s.get_modelmeta().custom_metadata_map, b.get_modelmeta().custom_metadata_map
    print(f"metadata identical: {ms == mb} ({len(mb)} keys; names={mb.get('names')} kpt_shape={mb.get('kpt_shape')}"
          f" imgsz={mb.get('imgsz')} stride={mb.get('stride')})")

    picks = [0, 100, 200, 300, 400, 500, 600, 700]
    x = to_input(np.stack([letterbox(f) for f in frames(a.video, picks)]))
    ref = np.concatenate([s.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    print(f"frames {picks}; static outputs: {ref.shape}, |max| {np.abs(ref).max():.1f},"
          f" persons with score > 0.25 per frame {[int((ref[i, 4] > 0.25).sum()) for i in range(len(x))]}, max score per frame {[round(float(ref[i, 4].max()), 2) for i in range(len(x))]}")
    for n in (1, 2, 4, 8):
        out = np.concatenate([b.run(None, {"images": x[i:i + n]})[0] for i in range(0, len(x), n)])
        assert out.shape == ref.shape, out.shape
        d = np.abs(out - ref)
        print(f"batch {n}: max abs diff vs static {d.max():.3g} (boxes {d[:, :4].max():.3g}, score {d[:, 4].max():.3g},"
              f" keypoints {d[:, 5:].max():.3g}); same score>0.25 anchors: {np.array_equal(out[:, 4] > 0.25, ref[:, 4] > 0.25)}")

    print(f"time per frame, ms, median/min of {a.runs} runs after 3 warm-up runs:")
    print("round     static@1      batch@1      batch@2      batch@4      batch@8  load(1m)")
    for r in range(a.rounds):
        row = [per_frame_ms(s, x[:1], a.runs)] + [per_frame_ms(b, x[:n], a.runs) for n in (1, 2, 4, 8)]
        print(f"{r + 1:5}  " + "  ".join(f"{m:6.1f}/{n:5.1f}" for m, n in row) + f"  {os.getloadavg()[0]:8.2f}")


if __name__ == "__main__":
    main()
