#!/usr/bin/env bash
# The zone and line events expected of the analytics crate on vtest.avi's reference tracks, from an
# independent oracle (scripts/zone_oracle.py, with shapely's geometry) over the rules in
# tests/reference/zones/vtest.avi.rules.toml; written to tests/reference/zones/ and compared by
# analytics/tests/zones_reference.rs. Makes its own virtualenv from PyPI the first time.
#   scripts/zone_oracle.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SHAPELY_VERSION="2.2.0"
venv="$CACHE_DIR/zones-venv"
dir="$REPO_ROOT/tests/reference/zones"

if ! "$venv/bin/python" -c "import shapely; assert shapely.__version__ == '$SHAPELY_VERSION'" 2>/dev/null; then
  log "zone oracle: installing shapely==$SHAPELY_VERSION from PyPI into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "shapely==$SHAPELY_VERSION"
fi
"$venv/bin/python" "$REPO_ROOT/scripts/zone_oracle.py" \
  --tracks "$REPO_ROOT/tests/reference/tracks/vtest.avi.csv" --fps 10 \
  --rules "$dir/vtest.avi.rules.toml" --events "$dir/vtest.avi.events.csv" --occupancy "$dir/vtest.avi.occupancy.csv"
log "zone oracle: written to $dir"
