#!/usr/bin/env bash
# Writes docs/performance.md's benchmarks section and docs/perf/*.png from docs/perf/*.txt
# (scripts/run_benchmarks.sh makes those). Needs PyPI matplotlib, in a virtualenv in the cache.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
venv="$CACHE_DIR/report-venv"
if ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
  log "report: installing matplotlib into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "matplotlib==3.10.*"
fi
"$venv/bin/python" "$REPO_ROOT/scripts/perf_report.py"
