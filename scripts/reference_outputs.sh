#!/usr/bin/env bash
# Reference detections from Ultralytics' own `predict` on the repo's ONNX file, for the fidelity
# test (tests/tests/detector_fidelity.rs). Creates or reuses a virtualenv with PyPI packages
# outside the repo, then runs offline (YOLO_OFFLINE=1; no weights are downloaded: the model is
# models/yolo11n-pose.onnx) and writes tests/reference/ultralytics/*.json.
#   scripts/reference_outputs.sh            # install if needed, then write the reference
#   scripts/reference_outputs.sh --setup    # only create/update the virtualenv
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ULTRALYTICS_VERSION="8.4.190"
venv="$CACHE_DIR/ultralytics-venv"
out="$REPO_ROOT/tests/reference/ultralytics"
# Ultralytics writes a settings file on import; keep it here instead of ~/.config/Ultralytics.
export YOLO_CONFIG_DIR="$CACHE_DIR/ultralytics-config"

if ! "$venv/bin/python" -c "import ultralytics, onnxruntime, torch; assert ultralytics.__version__ == '$ULTRALYTICS_VERSION' and onnxruntime.__version__ == '$ORT_VERSION'" 2>/dev/null; then
  log "reference: installing ultralytics==$ULTRALYTICS_VERSION and onnxruntime==$ORT_VERSION from PyPI into $venv"
  start=$(date +%s)
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # PyPI's torch wheel for Linux x86_64 is the CUDA build (it pulls the nvidia-* wheels); PyPI has no
  # CPU-only torch, and Ultralytics imports torch even for an ONNX model (NMS, tensors).
  "$venv/bin/pip" install -q "ultralytics==$ULTRALYTICS_VERSION" "onnxruntime==$ORT_VERSION"
  log "reference: installed in $(( $(date +%s) - start )) s; virtualenv $(du -sh "$venv" | cut -f1)"
fi
[ "${1:-}" = "--setup" ] && exit 0

[ -f "$SAMPLE_VIDEO" ] && [ -f "$SAMPLE_IMAGE" ] || "$REPO_ROOT/samples/fetch.sh"
mkdir -p "$out"
cd "$REPO_ROOT"
YOLO_OFFLINE=1 "$venv/bin/python" "$REPO_ROOT/scripts/reference_outputs.py" \
  --model "$REPO_ROOT/models/yolo11n-pose.onnx" --out "$out" \
  "$SAMPLE_VIDEO" "$SAMPLE_IMAGE" bus.jpg zidane.jpg
log "reference: written to $out"
