# Shared settings for the repo's scripts. Source it; it does nothing by itself.
# Everything fetched is cached outside the repo, so a fresh clone re-uses it and `git clean` never loses it.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${YOLO_PIPELINE_CACHE:-$HOME/.cache/yolo-pipeline}"
# Runtime state of the services the scripts start (data dirs, logs, pid files).
# Outside $HOME: the postgres user must be able to reach its data dir.
STATE_DIR="${YOLO_PIPELINE_STATE:-/var/tmp/yolo-pipeline}"

ORT_VERSION="1.31.1"
# ONNX Runtime's shared library is installed here; /usr/local/lib is on the loader's default path, so a
# built detector runs with no LD_LIBRARY_PATH (see .cargo/config.toml for the link side).
ORT_LIB_DIR="${ORT_LIB_DIR:-/usr/local/lib}"

KAFKA_VERSION="4.1.1"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"

PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-detections}"
PG_USER="${PG_USER:-pipeline}"
PG_PASSWORD="${PG_PASSWORD:-pipeline}"

SAMPLE_VIDEO="$REPO_ROOT/samples/vtest.avi"
SAMPLE_IMAGE="$REPO_ROOT/samples/basketball1.png"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt sometimes loses files in the system temp folder mid-install; give it a folder of its own.
export TMPDIR="${TMPDIR:-$CACHE_DIR/tmp}"
mkdir -p "$CACHE_DIR" "$STATE_DIR" "$TMPDIR"

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] || die "PostgreSQL server binaries not found; run scripts/provision.sh"
  echo "$d"
}
