#!/usr/bin/env bash
# Runs the benchmarks against the real services and keeps their output in docs/perf/NAME.txt, each
# headed by the command that made it and the machine it ran on; scripts/perf_report.sh then writes
# docs/performance.md's measured section and its plots from those files.
#   scripts/run_benchmarks.sh [sink|live_latency|fleet|cameras_per_box|store_size|replay_partitions|vs_ultralytics|tracking_cost]...   (none: all)
# BASELINE_BIN_DIR (a folder with an older build's sink) adds that build to the sink benchmark's
# enforcement rounds.
# vs_ultralytics is scripts/speed_vs_ultralytics.sh (the detector against Ultralytics' predict);
# tracking_cost is the detector crate's benchmark of the tracker and zone rules against the model.
# Starts the services (and stops them at the end); builds the release binaries first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(sink live_latency fleet cameras_per_box store_size replay_partitions vs_ultralytics tracking_cost)
cargo build --release --workspace --bins
# The services only for the benchmarks that use them (vs_ultralytics and tracking_cost run without,
# on a quieter box).
if printf '%s\n' "${names[@]}" | grep -qvE '^(vs_ultralytics|tracking_cost)$'; then
  trap '"$REPO_ROOT/scripts/services.sh" stop' EXIT
  "$REPO_ROOT/scripts/services.sh" start
fi
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export DATABASE_ADMIN_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
export PGPASSWORD="$PG_PASSWORD"
machine="$(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr)"
for name in "${names[@]}"; do
  out="docs/perf/$name.txt"
  log "benchmark $name -> $out"
  case "$name" in
    vs_ultralytics) cmd=(scripts/speed_vs_ultralytics.sh) ;;
    tracking_cost) cmd=(cargo bench -q -p detector --bench tracking_cost) ;;
    *) cmd=(cargo bench -q -p pipeline-tests --bench "$name") ;;
  esac
  {
    echo "# command: ${cmd[*]}"
    echo "# machine: $machine"
    echo "# date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' || echo ' with uncommitted changes')"
    "${cmd[@]}" 2>/dev/null
  } > "$out.tmp"
  mv "$out.tmp" "$out"
  cat "$out"
done
