#!/usr/bin/env bash
# Reference tracks from Ultralytics' own ByteTrack (tests/reference/tracks/, read by
# analytics/tests/reference.rs): `model.track` on samples/vtest.avi with the repo's ONNX file, and
# hand-made scenarios fed to the same tracker; scripts/reference_tracks.py says what is recorded.
# Uses the virtualenv of scripts/reference_outputs.sh (created there if missing) with lap==0.5.13
# added (Ultralytics' tracker matches with it), offline.
#   scripts/reference_tracks.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

LAP_VERSION="0.5.13"
venv="$CACHE_DIR/ultralytics-venv"
out="$REPO_ROOT/tests/reference/tracks"
export YOLO_CONFIG_DIR="$CACHE_DIR/ultralytics-config"

"$REPO_ROOT/scripts/reference_outputs.sh" --setup
if ! "$venv/bin/python" -c "import lap; assert lap.__version__ == '$LAP_VERSION'" 2>/dev/null; then
  log "reference tracks: installing lap==$LAP_VERSION from PyPI into $venv"
  "$venv/bin/pip" install -q "lap==$LAP_VERSION"
fi
[ -f "$SAMPLE_VIDEO" ] || "$REPO_ROOT/samples/fetch.sh"
mkdir -p "$out"
cd "$REPO_ROOT"
YOLO_OFFLINE=1 "$venv/bin/python" "$REPO_ROOT/scripts/reference_tracks.py" \
  --model "$REPO_ROOT/models/yolo11n-pose.onnx" --out "$out" "$SAMPLE_VIDEO"
log "reference tracks: written to $out"
