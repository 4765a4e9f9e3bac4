#!/usr/bin/env bash
# The detector's frames/s against Ultralytics' own fp32 `predict` on one video, side by side in one
# run (this machine's speed drifts): Ultralytics with the square fp32 ONNX file, the detector with
# each shipped model, Ultralytics again, then Ultralytics on the PyTorch checkpoint (its
# rectangular path). The detector's time runs from process start to exit (`--output stdout`), so
# its model loading counts against it; Ultralytics' leaves out a warm-up frame.
#   scripts/speed_vs_ultralytics.sh [VIDEO]      (release binaries built)
# Lines `tool= model= fps=`, then `ultralytics_onnx_fps=<mean of both runs>` and, per model,
# `<model>_over_ultralytics=<ratio>`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
video="${1:-$SAMPLE_VIDEO}"
detector="$REPO_ROOT/target/release/detector"
[ -x "$detector" ] || die "build the release binaries first (cargo build --release)"

ultralytics() {
  local fps
  fps=$("$REPO_ROOT/scripts/ultralytics_fps.sh" "$video" "$1" 2>/dev/null | sed -n 's/^ultralytics_fps=//p')
  echo "tool=ultralytics model=$(basename "$1") fps=$fps"
}
detect() {
  local t0 frames t1
  t0=$(date +%s.%N)
  frames=$("$detector" --source "$video" --model "models/$1" --output stdout 2>/dev/null | wc -l)
  t1=$(date +%s.%N)
  echo "tool=detector model=$1 frames=$frames fps=$(awk -v f="$frames" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", f / (b - a) }')"
}

models=(yolo11n-pose.onnx yolo11n-pose-int8.onnx yolo11n-pose-rect.onnx yolo11n-pose-rect-int8.onnx)
{
  ultralytics models/yolo11n-pose.onnx
  for m in "${models[@]}"; do detect "$m"; done
  ultralytics models/yolo11n-pose.onnx
  ultralytics "$(checkpoint)"
} | tee "$TMPDIR/speed.txt"
awk '
  /tool=ultralytics model=yolo11n-pose.onnx/ { split($3, a, "="); u += a[2]; n++ }
  /tool=detector/ { split($2, m, "="); split($4, a, "="); d[m[2]] = a[2]; order[++k] = m[2] }
  END {
    printf "ultralytics_onnx_fps=%.2f\n", u / n
    for (i = 1; i <= k; i++) { name = order[i]; sub(/\.onnx$/, "", name); printf "%s_over_ultralytics=%.2f\n", name, d[order[i]] / (u / n) }
  }' "$TMPDIR/speed.txt"
