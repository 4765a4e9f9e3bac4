-- frames and detections partitioned by capture time: a store that grows stays as fast to write
-- (each day's indexes are small and hot) and to query by time (a time range reads only its days),
-- and old days are dropped whole. The sink makes the daily partitions ahead and drops those past
-- its retention (sink/src/partitions.rs); a default partition takes any row outside them (a
-- camera whose clock is wrong), so nothing is refused for its time.
--
-- A partitioned table's unique keys must include the partition column, but the natural key must
-- hold across partitions: a file processed again is the same run with new capture times. So the
-- natural key moves to frame_keys, narrow and unpartitioned; the sink inserts every frame's key
-- there first, in the same transaction as its rows.
CREATE TABLE frame_keys (
    camera_id   text        NOT NULL,
    run_id      uuid        NOT NULL,
    frame_seq   bigint      NOT NULL,
    captured_at timestamptz NOT NULL, -- the frame's, so retention can forget keys with their rows
    PRIMARY KEY (camera_id, run_id, frame_seq)
);
-- Keys arrive in about capture order: a BRIN index serves retention's deletes at almost no cost.
CREATE INDEX frame_keys_captured_at ON frame_keys USING brin (captured_at);
INSERT INTO frame_keys SELECT camera_id, run_id, frame_seq, captured_at FROM frames;

DROP VIEW runs;
DROP VIEW people_per_minute;

-- The tables as they are become one partition each, holding everything stored so far (attached,
-- not copied); an empty one is dropped instead. Their primary keys give way to the partitioned
-- tables' (built on them as they are attached); the time indexes are kept and become theirs.
ALTER TABLE frames DROP CONSTRAINT frames_pkey;
ALTER TABLE frames RENAME TO frames_history;
ALTER INDEX frames_camera_time RENAME TO frames_history_camera_time;
ALTER TABLE detections DROP CONSTRAINT detections_pkey;
ALTER TABLE detections RENAME TO detections_history;
ALTER INDEX detections_camera_time RENAME TO detections_history_camera_time;

CREATE TABLE frames (LIKE frames_history INCLUDING DEFAULTS) PARTITION BY RANGE (captured_at);
ALTER TABLE frames ADD PRIMARY KEY (camera_id, run_id, frame_seq, captured_at);
CREATE INDEX frames_camera_time ON frames (camera_id, captured_at);
CREATE TABLE frames_default PARTITION OF frames DEFAULT;

CREATE TABLE detections (LIKE detections_history INCLUDING DEFAULTS) PARTITION BY RANGE (captured_at);
ALTER TABLE detections ADD PRIMARY KEY (camera_id, run_id, frame_seq, det_index, captured_at);
CREATE INDEX detections_camera_time ON detections (camera_id, captured_at);
CREATE TABLE detections_default PARTITION OF detections DEFAULT;

-- History ends at the end of the UTC day of its newest row (or of today): the daily partitions the
-- sink makes start after it.
DO $$
DECLARE
    upto timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM frames_history) AND NOT EXISTS (SELECT 1 FROM detections_history) THEN
        DROP TABLE frames_history;
        DROP TABLE detections_history;
        RETURN;
    END IF;
    SELECT (date_trunc('day', greatest(max(captured_at), now()) AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
        INTO upto
        FROM (SELECT captured_at FROM frames_history UNION ALL SELECT captured_at FROM detections_history) t;
    EXECUTE format('ALTER TABLE frames ATTACH PARTITION frames_history FOR VALUES FROM (MINVALUE) TO (%L)', upto);
    EXECUTE format('ALTER TABLE detections ATTACH PARTITION detections_history FOR VALUES FROM (MINVALUE) TO (%L)', upto);
END
$$;

-- The views of migrations 1 and 2, on the partitioned tables.
CREATE VIEW people_per_minute AS
SELECT camera_id,
       date_trunc('minute', captured_at)        AS minute,
       count(*)                                 AS frames,
       round(avg(person_count)::numeric, 2)     AS avg_people,
       max(person_count)                        AS max_people
FROM frames
GROUP BY camera_id, date_trunc('minute', captured_at);

CREATE VIEW runs AS
SELECT camera_id,
       run_id,
       count(*)                 AS frames,
       sum(person_count)        AS detections,
       min(captured_at)         AS first_captured_at,
       max(captured_at)         AS last_captured_at,
       min(model_name)          AS model_name,
       min(model_sha256)        AS model_sha256
FROM frames
GROUP BY camera_id, run_id;
