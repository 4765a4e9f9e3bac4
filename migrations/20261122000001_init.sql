-- One row per frame message: "nobody there" (person_count = 0) differs from "no data" (no row).
CREATE TABLE frames (
    camera_id       text        NOT NULL,
    frame_seq       bigint      NOT NULL,
    captured_at     timestamptz NOT NULL,
    pts_ms          bigint      NOT NULL,
    frame_width     integer     NOT NULL,
    frame_height    integer     NOT NULL,
    person_count    integer     NOT NULL,
    model_name      text        NOT NULL,
    model_sha256    text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    -- The natural key: a re-sent frame (a replay, a file processed again) cannot add a row.
    PRIMARY KEY (camera_id, frame_seq)
);
CREATE INDEX frames_camera_time ON frames (camera_id, captured_at);

-- One row per detected object.
CREATE TABLE detections (
    camera_id   text        NOT NULL,
    frame_seq   bigint      NOT NULL,
    det_index   integer     NOT NULL, -- position in the frame's message, best score first
    class       text        NOT NULL,
    score       real        NOT NULL,
    x1          real        NOT NULL,
    y1          real        NOT NULL,
    x2          real        NOT NULL,
    y2          real        NOT NULL,
    -- keypoints[k][1..3] = x, y, score in source pixels (k = 1..17 for COCO pose); NULL for
    -- models without keypoints. A real[] loads ~30% faster by COPY than jsonb and is smaller.
    keypoints   real[],
    captured_at timestamptz NOT NULL, -- the frame's, repeated so time-range scans need no join
    PRIMARY KEY (camera_id, frame_seq, det_index)
);
CREATE INDEX detections_camera_time ON detections (camera_id, captured_at);

-- The next Kafka offset to read per consumer group and partition, written in the same transaction
-- as the rows it covers: the database, not Kafka, is the record of what has been stored.
CREATE TABLE sink_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- People seen per camera per minute: the mean and peak of per-frame counts.
CREATE VIEW people_per_minute AS
SELECT camera_id,
       date_trunc('minute', captured_at)        AS minute,
       count(*)                                 AS frames,
       round(avg(person_count)::numeric, 2)     AS avg_people,
       max(person_count)                        AS max_people
FROM frames
GROUP BY camera_id, date_trunc('minute', captured_at);
