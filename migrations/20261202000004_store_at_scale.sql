-- The store at a year of days and many sinks.
--
-- 1. The database enforces the natural key: every frames row has its key in frame_keys, with the
--    same capture time (a foreign key). A row written around frame_keys (an old sink running across
--    migration 3, a backfill by SQL) is refused instead of breaking the next replay of its frame.
-- 2. A per-minute rollup, kept by the sink in the transaction that stores the frames: dashboards
--    and the views read it, never the whole of frames.
-- 3. One store policy (days made ahead, days kept), in the database: sinks side by side cannot
--    disagree on it.
-- 4. A history partition that a frame from a camera with a clock far ahead stretched over the
--    coming days (migration 3 ends it at the day of its newest row) ends at today's end instead; the
--    rows beyond go to the default partition, where a metric counts them.

-- 1. Keys written around frame_keys are added; a second row under one key cannot be keyed (its
-- capture time differs from the key's) and stops the migration with how to find it.
INSERT INTO frame_keys (camera_id, run_id, frame_seq, captured_at)
SELECT camera_id, run_id, frame_seq, min(captured_at) FROM frames GROUP BY camera_id, run_id, frame_seq
ON CONFLICT DO NOTHING;

DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM frames f JOIN frame_keys k USING (camera_id, run_id, frame_seq) WHERE f.captured_at <> k.captured_at;
    IF n > 0 THEN
        -- The hint in the message itself: clients show the message, not always the hint.
        RAISE EXCEPTION 'migration 4: % frames rows repeat a stored frame''s key (camera_id, run_id, frame_seq) with another captured_at: the same frame stored twice. See them with: SELECT f.* FROM frames f JOIN frame_keys k USING (camera_id, run_id, frame_seq) WHERE f.captured_at <> k.captured_at; delete those rows and their detections, then run `sink migrate` again', n;
    END IF;
END
$$;

-- The key with its capture time, for the foreign key; its leading captured_at also serves
-- retention, which forgets keys by capture time (it replaces migration 3's BRIN index).
DROP INDEX frame_keys_captured_at;
ALTER TABLE frame_keys ADD CONSTRAINT frame_keys_time_key UNIQUE (captured_at, camera_id, run_id, frame_seq);
ALTER TABLE frames ADD CONSTRAINT frames_key_fkey
    FOREIGN KEY (camera_id, run_id, frame_seq, captured_at) REFERENCES frame_keys (camera_id, run_id, frame_seq, captured_at);

-- 2. People per camera, minute and run: one row per camera-minute of each run.
CREATE TABLE people_minutes (
    camera_id         text        NOT NULL,
    minute            timestamptz NOT NULL, -- the UTC minute, date_bin('1 minute', captured_at, '2000-01-01')
    run_id            uuid        NOT NULL,
    frames            integer     NOT NULL,
    people            bigint      NOT NULL, -- the sum of the frames' person_count
    max_people        integer     NOT NULL,
    first_captured_at timestamptz NOT NULL,
    last_captured_at  timestamptz NOT NULL,
    model_name        text        NOT NULL,
    model_sha256      text        NOT NULL,
    PRIMARY KEY (camera_id, minute, run_id)
);
CREATE INDEX people_minutes_minute ON people_minutes (minute);

INSERT INTO people_minutes
SELECT camera_id, date_bin('1 minute', captured_at, '2000-01-01'), run_id, count(*), sum(person_count), max(person_count),
       min(captured_at), max(captured_at), min(model_name), min(model_sha256)
FROM frames GROUP BY 1, 2, 3;

DROP VIEW people_per_minute;
DROP VIEW runs;

-- The views of migrations 1 and 2, now from the rollup: filter them on minute (people_per_minute)
-- or read people_minutes with a minute filter (runs over a time range), and no day of frames is read.
CREATE VIEW people_per_minute AS
SELECT camera_id,
       minute,
       sum(frames)::bigint                              AS frames,
       round(sum(people)::numeric / sum(frames), 2)     AS avg_people,
       max(max_people)                                  AS max_people
FROM people_minutes
GROUP BY camera_id, minute;

CREATE VIEW runs AS
SELECT camera_id,
       run_id,
       sum(frames)::bigint      AS frames,
       sum(people)::bigint      AS detections,
       min(first_captured_at)   AS first_captured_at,
       max(last_captured_at)    AS last_captured_at,
       min(model_name)          AS model_name,
       min(model_sha256)        AS model_sha256
FROM people_minutes
GROUP BY camera_id, run_id;

-- 3. The store's policy: one row.
CREATE TABLE store_policy (
    one            boolean     PRIMARY KEY DEFAULT true CHECK (one),
    -- Daily partitions made this many days ahead of today (UTC).
    days_ahead     integer     NOT NULL DEFAULT 7 CHECK (days_ahead BETWEEN 1 AND 366),
    -- Whole days of rows kept before today (UTC); 0 keeps everything.
    retention_days integer     NOT NULL DEFAULT 0 CHECK (retention_days BETWEEN 0 AND 36600),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO store_policy DEFAULT VALUES;

-- 4. History ends at today's end (UTC) at the latest.
DO $$
DECLARE
    cap timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC';
    upto timestamptz;
BEGIN
    IF to_regclass('frames_history') IS NULL THEN
        RETURN;
    END IF;
    SELECT max(captured_at) INTO upto FROM (SELECT captured_at FROM frames_history UNION ALL SELECT captured_at FROM detections_history) t;
    IF upto IS NULL OR upto < cap THEN
        RETURN;
    END IF;
    ALTER TABLE frames DETACH PARTITION frames_history;
    ALTER TABLE detections DETACH PARTITION detections_history;
    INSERT INTO frames SELECT * FROM frames_history WHERE captured_at >= cap;
    DELETE FROM frames_history WHERE captured_at >= cap;
    INSERT INTO detections SELECT * FROM detections_history WHERE captured_at >= cap;
    DELETE FROM detections_history WHERE captured_at >= cap;
    EXECUTE format('ALTER TABLE frames ATTACH PARTITION frames_history FOR VALUES FROM (MINVALUE) TO (%L)', cap);
    EXECUTE format('ALTER TABLE detections ATTACH PARTITION detections_history FOR VALUES FROM (MINVALUE) TO (%L)', cap);
    RAISE NOTICE 'migration 4: history now ends at %; its rows captured after that (up to %) moved to the default partitions', cap, upto;
END
$$;
