#!/usr/bin/env bash
# Writes models/yolo11n-pose-batch.onnx: the shipped models/yolo11n-pose.onnx with a dynamic batch
# dimension (input `images` [batch,3,640,640], output `output0` [batch,56,8400]), so several frames
# run in one ONNX Runtime call. Made by ONNX graph surgery with PyPI `onnx` (the small venv that
# make_test_models.sh uses), not a re-export, which would need the ~6 GB PyTorch venv.
#   scripts/make_batch_model.sh            # write the model
#   scripts/make_batch_model.sh --check    # then compare it with the static model in ONNX Runtime
#                                          # and time it (adds onnxruntime and opencv to the venv)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
venv="$CACHE_DIR/onnx-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "onnx==1.17.0" "numpy<2.3"
"$venv/bin/python" "$REPO_ROOT/scripts/make_batch_model.py" \
  "$REPO_ROOT/models/yolo11n-pose.onnx" "$REPO_ROOT/models/yolo11n-pose-batch.onnx"
[ "${1:-}" = "--check" ] || exit 0

"$venv/bin/pip" install -q "onnxruntime==$ORT_VERSION" "opencv-python-headless==5.0.0.93" "numpy<2.3"
[ -f "$SAMPLE_VIDEO" ] || "$REPO_ROOT/samples/fetch.sh"
"$venv/bin/python" "$REPO_ROOT/scripts/check_batch_model.py" \
  "$REPO_ROOT/models/yolo11n-pose.onnx" "$REPO_ROOT/models/yolo11n-pose-batch.onnx" "$SAMPLE_VIDEO"
