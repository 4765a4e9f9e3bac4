#!/usr/bin/env bash
# Fetches the sample media from Debian's opencv-doc package and checks each file's sha256.
# The .deb is cached outside the repo; the extracted files land here, in samples/ (git-ignored).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

DEB_VERSION="4.6.0+dfsg-12"
DATA="usr/share/doc/opencv-doc/examples/data"
# name  sha256
FILES="
vtest.avi 45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
basketball1.png ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6
"

ok() { [ -f "$REPO_ROOT/samples/$1" ] && echo "$2  $REPO_ROOT/samples/$1" | sha256sum -c --status; }

need=0
while read -r name sum; do
  [ -n "$name" ] || continue
  ok "$name" "$sum" || need=1
done <<< "$FILES"
if [ "$need" = 0 ]; then log "samples: present and verified"; exit 0; fi

dl="$CACHE_DIR/opencv-doc"
mkdir -p "$dl"
deb="$dl/opencv-doc_${DEB_VERSION}_all.deb"
if [ ! -f "$deb" ]; then
  log "samples: downloading opencv-doc $DEB_VERSION"
  # apt-get download writes into the current folder; stale package lists get one refresh.
  fetch() { (cd "$dl" && apt-get download -q "opencv-doc=$DEB_VERSION" 2>&1 | grep -v unsandboxed || true); }
  fetch
  if [ ! -f "$deb" ]; then
    $([ "$(id -u)" = 0 ] || echo sudo) apt-get update -q >/dev/null
    fetch
  fi
  [ -f "$deb" ] || die "could not download opencv-doc=$DEB_VERSION from the Debian archive"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
while read -r name sum; do
  [ -n "$name" ] || continue
  cp "$tmp/$DATA/$name" "$REPO_ROOT/samples/$name"
  ok "$name" "$sum" || die "samples/$name: sha256 mismatch (expected $sum)"
  log "samples: $name verified"
done <<< "$FILES"
