-- Wire v2: every frame belongs to a run (one run of one camera's source in one detector process),
-- and the natural key becomes (camera_id, run_id, frame_seq): a restarted detector's frames are
-- new rows, not collisions with the last run's. Frames stored before this migration, and v1
-- messages still in a topic, belong to the nil run. Adding a column with a constant default
-- rewrites nothing; the primary keys are rebuilt.
ALTER TABLE frames ADD COLUMN run_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE detections ADD COLUMN run_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
-- From now on the sink names every row's run; no default may hide one it forgot.
ALTER TABLE frames ALTER COLUMN run_id DROP DEFAULT;
ALTER TABLE detections ALTER COLUMN run_id DROP DEFAULT;

ALTER TABLE frames DROP CONSTRAINT frames_pkey, ADD PRIMARY KEY (camera_id, run_id, frame_seq);
ALTER TABLE detections DROP CONSTRAINT detections_pkey, ADD PRIMARY KEY (camera_id, run_id, frame_seq, det_index);

-- One row per run: what a camera's frames were made of, and when.
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
