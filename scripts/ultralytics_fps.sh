#!/usr/bin/env bash
# Frames per second of Ultralytics' own `predict` on a video with an ONNX model: the baseline the
# int8 model's speed goal is stated against. Uses the virtualenv of scripts/reference_outputs.sh
# (created there if missing), offline, with predict's defaults as the fidelity reference uses them.
#   scripts/ultralytics_fps.sh [VIDEO [MODEL]]     last line: ultralytics_fps=<f>
set -euo pipefail
source "$(dirname "$0")/lib.sh"
"$REPO_ROOT/scripts/reference_outputs.sh" --setup
video="${1:-$SAMPLE_VIDEO}"
model="${2:-$REPO_ROOT/models/yolo11n-pose.onnx}"
export YOLO_CONFIG_DIR="$CACHE_DIR/ultralytics-config"
YOLO_OFFLINE=1 "$CACHE_DIR/ultralytics-venv/bin/python" - "$video" "$model" <<'PY'
import sys, time
from ultralytics import YOLO

video, model = sys.argv[1:3]
yolo = YOLO(model, task="pose")
# Warm-up outside the timing: the first call loads the ONNX Runtime session.
next(iter(yolo.predict(video, stream=True, imgsz=640, conf=0.25, iou=0.7, verbose=False)))
t = time.perf_counter()
frames = sum(1 for _ in yolo.predict(video, stream=True, imgsz=640, conf=0.25, iou=0.7, verbose=False))
secs = time.perf_counter() - t
print(f"video={video} model={model} frames={frames} seconds={secs:.2f}")
print(f"ultralytics_fps={frames / secs:.2f}")
PY
