#!/usr/bin/env bash
# The main job: set everything up, then run the whole pipeline on the sample video
#   detector (vtest.avi) -> Kafka -> sink -> PostgreSQL
# and print what the table says: people per second of video. Stops the servers at the end; the
# rows stay in PostgreSQL (scripts/services.sh start postgres, then query them).
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

export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export KAFKA_TOPIC="detections"
export DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
export PGPASSWORD="$PG_PASSWORD"
CAMERA="vtest"
psql_q() { psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"; }

./target/release/sink migrate
# A fresh picture for this camera (a re-run would otherwise be absorbed as a replay).
psql_q -qc "DELETE FROM detections WHERE camera_id = '$CAMERA'; DELETE FROM frames WHERE camera_id = '$CAMERA';"

./target/release/sink run --group-id demo-sink > "$STATE_DIR/demo-sink.log" 2>&1 &
sink_pid=$!
log "sink running (pid $sink_pid, log $STATE_DIR/demo-sink.log)"

log "detector: samples/vtest.avi -> Kafka topic $KAFKA_TOPIC"
./target/release/detector --source samples/vtest.avi --camera-id "$CAMERA"

frames=$(ffprobe -v error -select_streams v:0 -count_frames -show_entries stream=nb_read_frames -of csv=p=0 samples/vtest.avi)
log "waiting for the sink to store all $frames frames"
for _ in $(seq 1 240); do
  stored=$(psql_q -Atc "SELECT count(*) FROM frames WHERE camera_id = '$CAMERA'")
  [ "$stored" = "$frames" ] && break
  sleep 0.5
done
kill -TERM "$sink_pid"; wait "$sink_pid"; sink_pid=""
[ "$stored" = "$frames" ] || die "only $stored of $frames frames stored; see $STATE_DIR/demo-sink.log"

echo
echo "== $stored frames stored. People per second of video (camera $CAMERA):"
psql_q -c "
  SELECT pts_ms / 1000                      AS second,
         count(*)                           AS frames,
         round(avg(person_count), 2)        AS avg_people,
         max(person_count)                  AS max_people
  FROM frames WHERE camera_id = '$CAMERA'
  GROUP BY 1 ORDER BY 1;"
psql_q -c "
  SELECT count(*) AS frames, sum(person_count) AS detections,
         round(avg(person_count), 2) AS avg_people_per_frame
  FROM frames WHERE camera_id = '$CAMERA';"
