-- The zone and line rules' output (wire v3's tracker.rules), stored exactly once by their keys: a
-- replayed frame carries the same events under the same keys, and a recount with new rules stores
-- its own beside them under another rule version (sink recount). Both tables are small next to
-- detections (an event per track and rule crossed, a sample per zone and second), so they are not
-- partitioned: retention deletes their old rows in batches, as it does the tracks'.

-- One row per event. kind: track_start, track_end, zone_enter, zone_exit, line_in, line_out; rule:
-- the zone's or line's name ('' for track events); frame_seq: the frame the event is dated at.
CREATE TABLE zone_events (
    camera_id       text             NOT NULL,
    run_id          uuid             NOT NULL,
    tracker_session uuid             NOT NULL,
    -- The rules' version (a hash of the rules and of the engine), as a signed 64-bit number.
    rule_version    bigint           NOT NULL,
    track_id        bigint           NOT NULL,
    rule            text             NOT NULL,
    kind            text             NOT NULL CHECK (kind IN ('track_start', 'track_end', 'zone_enter', 'zone_exit', 'line_in', 'line_out')),
    frame_seq       bigint           NOT NULL,
    -- When the event's frame was captured: exact for a live camera, the file's own spacing of
    -- frames from the message that reported it for a file.
    captured_at     timestamptz      NOT NULL,
    -- The frame's time on its session's clock (seconds of pts for a file, Unix time for a camera).
    stream_time     double precision NOT NULL,
    from_frame      bigint,           -- a zone exit's enter frame; a crossing's last frame on the old side
    confirmed_frame bigint,           -- the frame at which a zone enter or a crossing counted
    dwell_s         double precision, -- a zone exit's time inside
    before_x        double precision, -- a crossing's anchor point before and after, source pixels
    before_y        double precision,
    after_x         double precision,
    after_y         double precision,
    PRIMARY KEY (camera_id, run_id, tracker_session, rule_version, track_id, rule, kind, frame_seq)
);
CREATE INDEX zone_events_camera_time ON zone_events (camera_id, captured_at);
CREATE INDEX zone_events_time ON zone_events (captured_at);

-- Each zone's most tracks inside at any frame of a second of its session's clock.
CREATE TABLE zone_occupancy (
    camera_id       text        NOT NULL,
    run_id          uuid        NOT NULL,
    tracker_session uuid        NOT NULL,
    rule_version    bigint      NOT NULL,
    zone            text        NOT NULL,
    second          bigint      NOT NULL, -- floor of the session clock's time
    captured_at     timestamptz NOT NULL, -- when that second began, as zone_events' captured_at
    people          integer     NOT NULL,
    PRIMARY KEY (camera_id, run_id, tracker_session, rule_version, zone, second)
);
CREATE INDEX zone_occupancy_camera_time ON zone_occupancy (camera_id, captured_at);
CREATE INDEX zone_occupancy_time ON zone_occupancy (captured_at);

-- Reports over a time range [since, until) of capture time. Functions rather than views: the range
-- bounds the raw captured_at, so an index or the day partitions of track_observations serve it,
-- where a view filtered on its truncated hour or minute would read every row of every day. Plain
-- SQL, inlined by the planner into the caller's query.

-- Entries into each zone (zone_enter) and crossings of each line (line_in, line_out) per hour, as
-- distinct people: one track entering twice in an hour is one person that hour.
CREATE FUNCTION zone_entries_per_hour(since timestamptz, until timestamptz)
RETURNS TABLE (camera_id text, rule text, rule_version bigint, kind text, hour timestamptz, people bigint, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.camera_id, e.rule, e.rule_version, e.kind, date_trunc('hour', e.captured_at),
           count(DISTINCT (e.run_id, e.tracker_session, e.track_id)), count(*)
    FROM zone_events e
    WHERE e.kind IN ('zone_enter', 'line_in', 'line_out') AND e.captured_at >= since AND e.captured_at < until
    GROUP BY 1, 2, 3, 4, 5
$$;

-- Time spent in each zone per visit, over the visits that ended in the range.
CREATE FUNCTION zone_dwell(since timestamptz, until timestamptz)
RETURNS TABLE (camera_id text, zone text, rule_version bigint, visits bigint,
               p50_s double precision, p90_s double precision, p99_s double precision, max_s double precision)
LANGUAGE sql STABLE AS $$
    SELECT e.camera_id, e.rule, e.rule_version, count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY e.dwell_s),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY e.dwell_s),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY e.dwell_s),
           max(e.dwell_s)
    FROM zone_events e
    WHERE e.kind = 'zone_exit' AND e.captured_at >= since AND e.captured_at < until
    GROUP BY 1, 2, 3
$$;

-- People per minute as distinct tracks (a person seen on every frame of a minute is one), where
-- people_per_minute counts detections per frame.
CREATE FUNCTION tracked_people_per_minute(since timestamptz, until timestamptz)
RETURNS TABLE (camera_id text, minute timestamptz, people bigint)
LANGUAGE sql STABLE AS $$
    SELECT o.camera_id, date_trunc('minute', o.captured_at), count(DISTINCT (o.run_id, o.tracker_session, o.track_id))
    FROM track_observations o
    WHERE o.captured_at >= since AND o.captured_at < until
    GROUP BY 1, 2
$$;

-- Each zone's most and mean tracks inside per minute.
CREATE FUNCTION zone_occupancy_per_minute(since timestamptz, until timestamptz)
RETURNS TABLE (camera_id text, zone text, rule_version bigint, minute timestamptz, max_people integer, avg_people numeric)
LANGUAGE sql STABLE AS $$
    SELECT o.camera_id, o.zone, o.rule_version, date_trunc('minute', o.captured_at), max(o.people), round(avg(o.people), 2)
    FROM zone_occupancy o
    WHERE o.captured_at >= since AND o.captured_at < until
    GROUP BY 1, 2, 3, 4
$$;

-- The zones each track visited, under each rule version: the `tracks` summary's "zones visited".
-- A view, not a column of tracks, because it depends on the rules: a recount adds a version's
-- zones beside the live ones without touching the tracks.
CREATE VIEW track_zones AS
SELECT camera_id, run_id, tracker_session, track_id, rule_version,
       array_agg(DISTINCT rule ORDER BY rule)  AS zones,
       count(*)                                AS entries,
       min(captured_at)                        AS first_entered
FROM zone_events
WHERE kind = 'zone_enter'
GROUP BY camera_id, run_id, tracker_session, track_id, rule_version;
