-- The newest epoch stored per camera, for fencing (issue 19, docs/fleet.md): a detector in a fleet
-- puts its camera's lease epoch in each frame (wire v3's epoch), and an epoch only grows when the
-- camera changes host. The sink reads and moves a camera's row in the transaction that stores the
-- camera's frames and offsets, and refuses frames of an older epoch that arrive after a newer one
-- (sink/src/epochs.rs). Cameras not run by a fleet send no epoch and have no row. One row per
-- camera: small, never partitioned, and not subject to retention (a stale host may come back after
-- any time).
CREATE TABLE camera_epochs (
    camera_id  text        PRIMARY KEY,
    epoch      bigint      NOT NULL CHECK (epoch >= 0),
    -- When the epoch last moved: when the camera last changed host.
    updated_at timestamptz NOT NULL DEFAULT now()
);
