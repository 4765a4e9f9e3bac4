#!/usr/bin/env bash
# Writes the tiny synthetic ONNX models in tests/models/ that the layout tests run through ONNX
# Runtime: each takes `images` [1,3,320,320] and outputs a fixed tensor of one YOLO layout, so the
# expected detections are known exactly; and four-thirds-only.onnx (dynamic input) for the
# inference-fault tests, which ONNX Runtime fails to run on anything but one 640x480 frame. Needs PyPI `onnx` (a small venv in the cache). The models
# are committed; run this only to change them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
venv="$CACHE_DIR/onnx-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "onnx==1.17.0" "numpy<2.3"
"$venv/bin/python" "$REPO_ROOT/scripts/make_test_models.py" "$REPO_ROOT/tests/models"
