"""Reference detections from Ultralytics' own `predict` on an ONNX file, one JSON file per source.

Run by scripts/reference_outputs.sh (which makes the virtualenv and sets YOLO_OFFLINE=1):
    python reference_outputs.py --model models/yolo11n-pose.onnx --out DIR SOURCE...
A SOURCE that is not a file is looked up in the installed ultralytics package's assets
(bus.jpg, zidane.jpg; AGPL-3.0, Ultralytics) and copied into DIR beside its reference.

Each DIR/<source name>.json holds the versions used, the predict arguments and, per frame in
decode order (index 0 = the detector's frame_seq 0), the detections: [x1, y1, x2, y2, score,
[[kx, ky, kconf] x 17]], boxes and keypoints in source pixels, rounded to 3 decimals.
For a video it also checks that the frames Ultralytics saw are the frames FFmpeg decodes (the
library the detector's OpenCV reads through), in the same order.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import cv2
import onnxruntime
import torch
import ultralytics
from ultralytics import YOLO

from yolo_frames import ffmpeg_frames

PREDICT = dict(imgsz=640, conf=0.25, iou=0.7, max_det=300, device="cpu", verbose=False)


def r3(v):
    return round(float(v), 3)


def thumb(img):
    return cv2.resize(img, (96, 72), interpolation=cv2.INTER_AREA).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()
    assets = os.path.join(os.path.dirname(ultralytics.__file__), "assets")
    model = YOLO(args.model, task="pose")
    versions = {"ultralytics": ultralytics.__version__, "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__, "opencv_python": cv2.__version__, "numpy": np.__version__,
                "python": sys.version.split()[0]}
    print("versions:", versions, file=sys.stderr)
    for src in args.sources:
        if not os.path.isfile(src):
            asset = os.path.join(assets, src)
            dst = os.path.join(args.out, src)
            shutil.copyfile(asset, dst)  # AGPL-3.0 (Ultralytics), see the README there
            src = dst
        name = os.path.basename(src)
        frames, digests, thumbs, size = [], [], [], None
        for res in model.predict(src, stream=True, **PREDICT):
            h, w = res.orig_shape
            size = (w, h)
            digests.append(hashlib.md5(np.ascontiguousarray(res.orig_img).tobytes()).hexdigest())
            thumbs.append(thumb(res.orig_img))
            dets = []
            b = res.boxes
            kp = res.keypoints.data.cpu().numpy() if res.keypoints is not None else None
            for i in range(len(b)):
                x1, y1, x2, y2 = b.xyxy[i].tolist()
                kps = [[r3(x), r3(y), r3(c)] for x, y, c in kp[i]] if kp is not None else []
                dets.append([r3(x1), r3(y1), r3(x2), r3(y2), r3(b.conf[i]), kps])
            frames.append(dets)
        check = None
        if name.endswith((".avi", ".mp4", ".mkv", ".mov")):
            # Same frames, same order: Ultralytics' frame i against FFmpeg's frame i.
            # Identical bytes where both convert YUV to BGR alike; else the aligned frames must be
            # far closer than the neighbours (mean absolute difference of 96x72 thumbnails).
            ff, ff_thumbs = [], []
            for f in ffmpeg_frames(src, *size):
                ff.append(hashlib.md5(f.tobytes()).hexdigest())
                ff_thumbs.append(thumb(f))
            same = sum(a == b for a, b in zip(digests, ff))
            n = min(len(thumbs), len(ff_thumbs))
            mad = lambda o: float(np.mean([np.abs(thumbs[i] - ff_thumbs[i + o]).mean()
                                           for i in range(max(0, -o), min(n, n - o))]))
            check = {"ffmpeg_frames": len(ff), "ultralytics_frames": len(digests), "identical_frames": same,
                     "mean_abs_diff_aligned": round(mad(0), 4), "mean_abs_diff_next": round(mad(1), 4),
                     "mean_abs_diff_previous": round(mad(-1), 4)}
            print(f"{name}: frame check {check}", file=sys.stderr)
        doc = {"source": name, "width": size[0], "height": size[1], "versions": versions,
               "model": os.path.basename(args.model),
               "model_sha256": hashlib.sha256(open(args.model, "rb").read()).hexdigest(),
               "predict": {k: v for k, v in PREDICT.items() if k != "verbose"},
               "frame_check": check,
               "format": "frames[i] = detections of frame i (0-based decode order): [x1, y1, x2, y2, score, [[kx, ky, kconf] x 17]]",
               "frames": frames}
        path = os.path.join(args.out, name + ".json")
        with open(path, "w") as f:
            head = {k: v for k, v in doc.items() if k != "frames"}
            f.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"frames":[\n')
            f.write(",\n".join(json.dumps(d, separators=(",", ":")) for d in frames))
            f.write("\n]}\n")
        n = sum(len(d) for d in frames)
        print(f"{name}: {len(frames)} frames, {n} detections -> {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
