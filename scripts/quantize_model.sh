#!/usr/bin/env bash
# Writes models/yolo11n-pose-int8.onnx: static int8 QDQ quantization of models/yolo11n-pose.onnx with
# onnxruntime's own tools (quant_pre_process + quantize_static), calibrated on frames of
# samples/vtest.avi letterboxed as the detector does. Needs PyPI onnxruntime/onnx/sympy/numpy/opencv in
# a venv in the cache, and the ffmpeg CLI (provision.sh installs it). Runs offline once installed.
#   scripts/quantize_model.sh                 # quantize with the chosen recipe
#   scripts/quantize_model.sh --rect          # the same for models/yolo11n-pose-rect.onnx (dynamic height and
#                                             # width), calibrated on rectangular letterboxes -> yolo11n-pose-rect-int8.onnx
#   scripts/quantize_model.sh --eval R.jsonl  # also compare with fp32 on the frames not calibrated on, and time both
#                                             # (precision/recall of matched boxes, bare latency)
# Any other quantize_model.py option passes through (see `--help`), e.g. --out, --method, --exclude.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
venv="$CACHE_DIR/quant-venv"
if ! "$venv/bin/python" -c "import onnxruntime, onnx, sympy, cv2; assert onnxruntime.__version__ == '$ORT_VERSION'" 2>/dev/null; then
  log "quantize: installing onnxruntime==$ORT_VERSION, onnx, sympy into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "onnxruntime==$ORT_VERSION" onnx sympy "numpy<2.3" opencv-python-headless
fi
command -v ffmpeg >/dev/null || die "ffmpeg not found; run scripts/provision.sh"
[ -f "$SAMPLE_VIDEO" ] || "$REPO_ROOT/samples/fetch.sh"
name=yolo11n-pose
if [ "${1:-}" = "--rect" ]; then name=yolo11n-pose-rect; fi
out="$REPO_ROOT/models/$name-int8.onnx"
# The letterboxed frames (~1 GB) and the fp32 detections are cached here between runs.
"$venv/bin/python" "$REPO_ROOT/scripts/quantize_model.py" --video "$SAMPLE_VIDEO" \
  --model "$REPO_ROOT/models/$name.onnx" --out "$out" --work "$CACHE_DIR/quant-work" "$@"
for a in "$@"; do case "$a" in --out|--out=*|--eval-only|--eval-only=*) out="" ;; esac; done
[ -z "$out" ] || { sha256sum "$out"; log "quantize: wrote $out ($(stat -c %s "$out") bytes)"; }
