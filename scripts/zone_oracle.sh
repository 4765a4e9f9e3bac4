#!/usr/bin/env bash
# The zone and line events expected of the analytics crate, from an independent oracle
# (scripts/zone_oracle.py, with shapely's geometry): on vtest.avi's reference tracks under the rules
# in tests/reference/zones/vtest.avi.rules.toml, and on random tracks (scripts/zone_random_tracks.py,
# seed 7) under random.rules.toml; written to tests/reference/zones/ and compared by
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
oracle() { # TRACKS NAME: the rules dir/NAME.rules.toml, events and occupancy beside them
  "$venv/bin/python" "$REPO_ROOT/scripts/zone_oracle.py" --tracks "$1" --fps 10 --rules "$dir/$2.rules.toml" \
    --events "$dir/$2.events.csv" --occupancy "$dir/$2.occupancy.csv"
}
oracle "$REPO_ROOT/tests/reference/tracks/vtest.avi.csv" vtest.avi
"$venv/bin/python" "$REPO_ROOT/scripts/zone_random_tracks.py" --seed 7 --tracks 60 --out "$dir/random.csv"
oracle "$dir/random.csv" random
log "zone oracle: written to $dir"
