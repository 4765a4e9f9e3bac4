#!/usr/bin/env bash
# The main job: set everything up, then run the whole pipeline on the sample video
#   detector (vtest.avi) -> Kafka (framed for the schema registry) -> sink -> PostgreSQL
# and print what the table says: people per second of video. While it runs, the detector, the sink,
# the broker and the database are scraped by Prometheus (the repo's rules, with Alertmanager); it
# says where to look. Stops the servers at the end; the
# rows stay in PostgreSQL (scripts/services.sh start postgres, then query them). Running it again
# is a replay of the same run (same file, same model and settings): the table keeps each frame once.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/provision.sh"
cargo build --release --workspace --bins

sink_pid=""
cleanup() {
  if [ -n "$sink_pid" ] && kill -0 "$sink_pid" 2>/dev/null; then kill -TERM "$sink_pid"; wait "$sink_pid" || true; fi
  "$REPO_ROOT/scripts/services.sh" stop
}
trap cleanup EXIT
"$REPO_ROOT/scripts/services.sh" start
"$REPO_ROOT/scripts/services.sh" start monitoring
DETECTOR_METRICS="127.0.0.1:${DEMO_DETECTOR_METRICS_PORT:-9188}"
SINK_METRICS="127.0.0.1:${DEMO_SINK_METRICS_PORT:-9189}"
write_targets detector "$DETECTOR_METRICS"
write_targets sink "$SINK_METRICS"

export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export KAFKA_TOPIC="detections"
export DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
export SCHEMA_REGISTRY_URL="$REGISTRY_URL"
export PGPASSWORD="$PG_PASSWORD"
CAMERA="vtest"
psql_q() { psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"; }

./target/release/sink migrate

# A group of its own each time: the broker is fresh at every start (a fixture), so offsets an
# earlier demo stored would point past the new topic's messages.
GROUP="demo-sink-$(date +%s)"
./target/release/sink run --group-id "$GROUP" --metrics-addr "$SINK_METRICS" > "$STATE_DIR/demo-sink.log" 2>&1 &
sink_pid=$!
log "sink running (pid $sink_pid, log $STATE_DIR/demo-sink.log)"

log "metrics while it runs: http://$DETECTOR_METRICS/metrics (detector), http://$SINK_METRICS/metrics (sink),"
log "  http://127.0.0.1:$KAFKA_JMX_PORT/metrics (Kafka), http://127.0.0.1:$PG_EXPORTER_PORT/metrics (PostgreSQL);"
log "  Prometheus http://127.0.0.1:$PROM_PORT (targets, alerts), Alertmanager http://127.0.0.1:$ALERTMANAGER_PORT"
log "detector: samples/vtest.avi -> Kafka topic $KAFKA_TOPIC"
./target/release/detector --source samples/vtest.avi --camera-id "$CAMERA" --metrics-addr "$DETECTOR_METRICS" 2> >(tee "$STATE_DIR/demo-detector.log" >&2)
# The run this file and these settings make: the same every time.
RUN=$(sed -n 's/.* run=\([0-9a-f-]\{36\}\).*/\1/p' "$STATE_DIR/demo-detector.log" | head -n 1)
[ -n "$RUN" ] || die "no run id in $STATE_DIR/demo-detector.log"

frames=$(ffprobe -v error -select_streams v:0 -count_frames -show_entries stream=nb_read_frames -of csv=p=0 samples/vtest.avi)
log "waiting for the sink to account for all $frames messages of run $RUN"
for _ in $(seq 1 240); do
  done_msgs=$(psql_q -Atc "SELECT coalesce(sum(next_offset), 0) FROM sink_offsets WHERE consumer_group = '$GROUP'")
  [ "$done_msgs" = "$frames" ] && break
  sleep 0.5
done
kill -TERM "$sink_pid"; wait "$sink_pid"; sink_pid=""
stored=$(psql_q -Atc "SELECT count(*) FROM frames WHERE camera_id = '$CAMERA' AND run_id = '$RUN'")
[ "$stored" = "$frames" ] || die "only $stored of $frames frames stored; see $STATE_DIR/demo-sink.log"
replayed=$(grep "progress" "$STATE_DIR/demo-sink.log" | tail -n 1 | sed -n 's/.* replayed=\([0-9]*\).*/\1/p')

echo
echo "== run $RUN of camera $CAMERA: $stored frames stored (this time the sink found ${replayed:-0} already stored)."
echo "== People per second of video:"
psql_q -c "
  SELECT pts_ms / 1000                      AS second,
         count(*)                           AS frames,
         round(avg(person_count), 2)        AS avg_people,
         max(person_count)                  AS max_people
  FROM frames WHERE camera_id = '$CAMERA' AND run_id = '$RUN'
  GROUP BY 1 ORDER BY 1;"
psql_q -c "
  SELECT count(*) AS frames, sum(person_count) AS detections,
         round(avg(person_count), 2) AS avg_people_per_frame
  FROM frames WHERE camera_id = '$CAMERA' AND run_id = '$RUN';"
echo "== Every run of camera $CAMERA in the table:"
psql_q -c "SELECT * FROM runs WHERE camera_id = '$CAMERA' ORDER BY first_captured_at;"
