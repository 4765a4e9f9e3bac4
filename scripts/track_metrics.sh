#!/usr/bin/env bash
# The detector's tracks against Ultralytics' reference tracks, scored by py-motmetrics
# (scripts/track_metrics.py says what each figure is); installs its virtualenv when missing.
# Prints one JSON line. tests/tests/detector_tracks.rs runs it.
#   scripts/track_metrics.sh REFERENCE_CSV SCENARIO DETECTOR_JSONL
set -euo pipefail
source "$(dirname "$0")/lib.sh"
install_motmetrics >&2
"$MOTMETRICS_VENV/bin/python" "$REPO_ROOT/scripts/track_metrics.py" "$@"
