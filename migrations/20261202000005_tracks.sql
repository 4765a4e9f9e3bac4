-- Tracks (wire v3's tracker), stored exactly once like the frames they ride in: a recount with new
-- rules replays exactly what the live tracker gave, and the summary per track is kept in the write
-- transaction from new frames only, so a replay adds nothing.
--
-- Nullable columns without a default: adding them rewrites no partition, and NULL is what the rows
-- stored before (and frames of a detector without --track) are: not tracked.

-- The frame's tracker session (ids restart at 1 with each one); NULL: the frame was not tracked.
ALTER TABLE frames ADD COLUMN tracker_session uuid;
-- The track matched to this detection, within its frame's session; NULL: none (or not tracked).
-- bigint: the wire allows ids up to 2^63 - 1.
ALTER TABLE detections ADD COLUMN track_id bigint;

-- One row per track per tracked frame, as the tracker gave it: partitioned by capture time exactly
-- like detections (the sink makes and drops its days with theirs), keyed by the frame's natural key
-- and the track id. A frame's observations are inserted with its frame row or not at all, like its
-- detections, so frame_keys decides for them too.
CREATE TABLE track_observations (
    camera_id       text        NOT NULL,
    run_id          uuid        NOT NULL,
    frame_seq       bigint      NOT NULL,
    track_id        bigint      NOT NULL,
    tracker_session uuid        NOT NULL, -- the frame's, repeated so a track's rows need no join
    -- The Kalman filter's box after this frame's update, source pixels, not clipped to the frame.
    x1              real        NOT NULL,
    y1              real        NOT NULL,
    x2              real        NOT NULL,
    y2              real        NOT NULL,
    score           real        NOT NULL, -- the matched detection's
    -- The matched detection's det_index; NULL when that detection scored at most --conf (a
    -- low-score track: kept alive by a detection that is not one of the frame's detections).
    det_index       integer,
    captured_at     timestamptz NOT NULL, -- the frame's
    PRIMARY KEY (camera_id, run_id, frame_seq, track_id, captured_at)
) PARTITION BY RANGE (captured_at);
CREATE INDEX track_observations_camera_time ON track_observations (camera_id, captured_at);
CREATE TABLE track_observations_default PARTITION OF track_observations DEFAULT;

-- One row per track: a person is (camera_id, run_id, tracker_session, track_id). Kept by the sink in
-- the transaction that stores the frames, from the frames it stores new, so it equals a GROUP BY over
-- track_observations; retention forgets a track once its last observation is past the cutoff.
CREATE TABLE tracks (
    camera_id       text        NOT NULL,
    run_id          uuid        NOT NULL,
    tracker_session uuid        NOT NULL,
    track_id        bigint      NOT NULL,
    first_seen      timestamptz NOT NULL, -- the capture time of its first observation
    last_seen       timestamptz NOT NULL, -- and of its last
    frames          integer     NOT NULL, -- observations: frames it was matched on
    best_score      real        NOT NULL,
    PRIMARY KEY (camera_id, run_id, tracker_session, track_id)
);
-- Tracks seen in a time range, and retention's deletes in order of time.
CREATE INDEX tracks_last_seen ON tracks (last_seen);
CREATE INDEX tracks_camera_first_seen ON tracks (camera_id, first_seen);
