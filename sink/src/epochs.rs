//! Fencing by epoch (issue 19, docs/fleet.md): a detector host that lost a camera (paused, cut
//! off) must not have its frames stored beside the new owner's. A detector in a fleet puts the
//! camera's lease epoch in every frame (`wire::FrameMessage::epoch`), which grows each time the
//! camera changes host; `camera_epochs` holds the newest epoch stored per camera.
//!
//! **The rule.** In a part's transaction, after the offset fence and before any row, the part's
//! cameras' epochs are locked and read, and its frames judged in log order ([`judge`]): a frame
//! whose epoch is older than the newest of the stored epoch and the epochs of the camera's earlier
//! frames in the batch is *fenced*: sent to the dead-letter topic, counted, taken out of the part;
//! its offset is consumed like any other, nothing is retried. A frame of epoch 5 that comes before
//! any of epoch 6 is stored; once one of epoch 6 is stored or earlier in the batch, it is fenced.
//! The camera's row moves to the newest epoch of the frames not fenced (a frame whose rows the
//! database then refuses still shows its host's lease) in the same transaction as the rows and
//! offsets. A frame without an epoch (a detector not in a fleet) is never fenced and moves nothing.
//!
//! **A frame already stored is never fenced.** An older frame whose key is in `frame_keys` is a
//! replay of a frame stored before the newer epoch came (a group reset, another group reading the
//! topic from its start): it goes on to the merge as a replay, as it would without fencing. Only
//! the older frames' keys are looked up, so a batch with none costs one locking read.
//!
//! **Why a replay decides the same.** A transaction that rolls back takes the moved epochs with
//! it, so its redo judges the same frames against the same state. After a commit, a partition's
//! messages are not read again by its group (the offset protocol); read again by another group,
//! a frame that was stored is a replay by the rule above, and a frame that was fenced is not stored
//! and older than the stored epoch, which has only grown since: fenced again. Rows stay exactly
//! once; the dead letters, sent before the commit, are at least once like the refused rows'.
//!
//! One transaction at a time judges a camera: its frames share a partition, whose writers queue on
//! the offset row first. Should a camera's frames come in two partitions (more partitions added
//! to the topic), there is no order between them to keep, and the stored epoch still never goes
//! back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::SinkError;
use crate::message::{FrameKey, Row};

/// A frame older than its camera's newest epoch so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Older {
    /// Its place in the batch's frames.
    pub index: usize,
    pub epoch: u64,
    pub newest: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// The frames older than their camera's newest epoch so far, in log order: fenced unless
    /// already stored.
    pub older: Vec<Older>,
    /// The cameras whose newest epoch in the batch is above the stored one, or that have none:
    /// the epoch to store.
    pub raised: BTreeMap<String, u64>,
}

/// Judges `frames` (camera, epoch), in log order, against the `stored` epochs.
pub fn judge<'a>(frames: impl IntoIterator<Item = (&'a str, Option<u64>)>, stored: &HashMap<String, u64>) -> Judged {
    let mut newest: HashMap<&str, u64> = HashMap::new();
    let mut older = Vec::new();
    for (index, (camera, epoch)) in frames.into_iter().enumerate() {
        let Some(epoch) = epoch else { continue };
        match newest.get(camera).or_else(|| stored.get(camera)) {
            Some(&n) if epoch < n => older.push(Older { index, epoch, newest: n }),
            _ => {
                newest.insert(camera, epoch);
            }
        }
    }
    let raised = newest.into_iter().filter(|(c, e)| stored.get(*c).is_none_or(|s| e > s)).map(|(c, e)| (c.to_string(), e)).collect();
    Judged { older, raised }
}

/// In the part's transaction: judges its frames, moves the cameras' epochs, and returns the
/// frames fenced (older, and not stored yet).
pub async fn fence(conn: &mut PgConnection, frames: &[Row]) -> Result<Vec<Older>, SinkError> {
    let cameras: BTreeSet<&str> = frames.iter().filter(|r| r.msg.epoch.is_some()).map(|r| r.msg.camera_id.as_str()).collect();
    if cameras.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT camera_id, epoch FROM camera_epochs WHERE camera_id = ANY($1) ORDER BY camera_id FOR UPDATE")
            .bind(cameras.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
    let stored = rows.into_iter().map(|(c, e)| (c, e as u64)).collect();
    let judged = judge(frames.iter().map(|r| (r.msg.camera_id.as_str(), r.msg.epoch)), &stored);
    if !judged.raised.is_empty() {
        let (cameras, epochs): (Vec<&str>, Vec<i64>) = judged.raised.iter().map(|(c, e)| (c.as_str(), *e as i64)).unzip();
        sqlx::query(
            "INSERT INTO camera_epochs AS s (camera_id, epoch) SELECT * FROM UNNEST($1::text[], $2::bigint[])
             ON CONFLICT (camera_id) DO UPDATE SET epoch = EXCLUDED.epoch, updated_at = now() WHERE s.epoch < EXCLUDED.epoch",
        )
        .bind(cameras)
        .bind(epochs)
        .execute(&mut *conn)
        .await?;
    }
    if judged.older.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<FrameKey> = judged.older.iter().map(|o| frames[o.index].key()).collect();
    let stored: BTreeSet<FrameKey> = sqlx::query_as::<_, (String, Uuid, i64)>(
        "SELECT k.camera_id, k.run_id, k.frame_seq FROM frame_keys k
         JOIN UNNEST($1::text[], $2::uuid[], $3::bigint[]) AS u(c, r, s) ON k.camera_id = u.c AND k.run_id = u.r AND k.frame_seq = u.s",
    )
    .bind(keys.iter().map(|k| k.camera_id.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.run_id).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.frame_seq).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(camera_id, run_id, frame_seq)| FrameKey { camera_id, run_id, frame_seq })
    .collect();
    Ok(judged.older.into_iter().zip(keys).filter(|(_, k)| !stored.contains(k)).map(|(o, _)| o).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what, stored epochs, frames in log order, the older frames (index, epoch, newest), raised)
    type Case =
        (&'static str, Vec<(&'static str, u64)>, Vec<(&'static str, Option<u64>)>, Vec<(usize, u64, u64)>, Vec<(&'static str, u64)>);

    #[test]
    fn judgements() {
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("no epochs: nothing judged, nothing stored", vec![("a", 3)], vec![("a", None), ("b", None)], vec![], vec![]),
            ("a first epoch is stored", vec![], vec![("a", Some(1)), ("a", Some(1))], vec![], vec![("a", 1)]),
            ("the stored epoch again: stored, nothing moves", vec![("a", 2)], vec![("a", Some(2))], vec![], vec![]),
            ("a newer epoch moves the camera", vec![("a", 2)], vec![("a", Some(2)), ("a", Some(3))], vec![], vec![("a", 3)]),
            ("older than the stored epoch", vec![("a", 2)], vec![("a", Some(1)), ("a", Some(2))], vec![(0, 1, 2)], vec![]),
            ("older than an earlier frame of the batch",
             vec![], vec![("a", Some(1)), ("a", Some(2)), ("a", Some(1)), ("a", Some(2))], vec![(2, 1, 2)], vec![("a", 2)]),
            ("an older epoch before any newer one is stored", vec![("a", 4)], vec![("a", Some(5)), ("a", Some(6))], vec![], vec![("a", 6)]),
            ("a fenced frame does not lower the bar",
             vec![("a", 5)], vec![("a", Some(3)), ("a", Some(4)), ("a", Some(5))], vec![(0, 3, 5), (1, 4, 5)], vec![]),
            ("cameras are judged apart", vec![("a", 2)], vec![("b", Some(9)), ("a", Some(1)), ("b", Some(1))], vec![(1, 1, 2), (2, 1, 9)], vec![("b", 9)]),
            ("frames without an epoch are never fenced", vec![("a", 2)], vec![("a", Some(3)), ("a", None), ("a", Some(3))], vec![], vec![("a", 3)]),
            ("the greatest epoch there is", vec![("a", 7)], vec![("a", Some(i64::MAX as u64)), ("a", Some(7))], vec![(1, 7, i64::MAX as u64)], vec![("a", i64::MAX as u64)]),
        ];
        for (what, stored, frames, older, raised) in cases {
            let stored = stored.into_iter().map(|(c, e)| (c.to_string(), e)).collect();
            let want = Judged {
                older: older.into_iter().map(|(index, epoch, newest)| Older { index, epoch, newest }).collect(),
                raised: raised.into_iter().map(|(c, e)| (c.to_string(), e)).collect(),
            };
            assert_eq!(judge(frames, &stored), want, "{what}");
        }
    }

    /// Stale frames (epoch 1) come after the newest (epoch 2): read once in batches of `n`, the
    /// frames not fenced stored, then read again in one batch against what the first reading
    /// stored, the older frames not stored are exactly those fenced the first time.
    #[test]
    fn a_replay_fences_the_same_frames() {
        let log = [1, 1, 2, 1, 2, 1, 1, 3, 2].map(|e| ("a", Some(e)));
        for n in 1..=log.len() {
            let (mut stored, mut kept, mut fenced) = (HashMap::new(), BTreeSet::new(), BTreeSet::new());
            for (b, batch) in log.chunks(n).enumerate() {
                let j = judge(batch.iter().copied(), &stored);
                fenced.extend(j.older.iter().map(|o| b * n + o.index));
                kept.extend((b * n..b * n + batch.len()).filter(|i| !fenced.contains(i)));
                stored.extend(j.raised);
            }
            assert_eq!(fenced, BTreeSet::from([3, 5, 6, 8]), "batches of {n}");
            let again = judge(log, &stored);
            let refenced: BTreeSet<usize> = again.older.iter().map(|o| o.index).filter(|i| !kept.contains(i)).collect();
            assert_eq!((refenced, again.raised.len()), (fenced, 0), "batches of {n}");
        }
    }
}
