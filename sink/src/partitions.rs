//! The partitions of `frames` and `detections` (migration 3): one per UTC day, made ahead of time
//! and dropped past the retention by the sink itself, at start and every hour, in one transaction
//! under an advisory lock so that sinks running side by side take turns. Why not pg_partman: it is
//! an extension to install in the server and a job to schedule for what comes down to a few
//! statements a day, and the sink already holds what decides them (the tables, the settings).
//!
//! What to do is [`plan`]'s, a pure function of the clock, the settings and the partitions there
//! are; [`maintain`] reads the partitions and carries the plan out. Rules it keeps:
//! - A day is made only where no partition covers any of it (the history partition migration 3
//!   attaches ends at a day's end), and rows the default partition holds for that day move into it.
//! - Retention drops whole partitions that end before the cutoff (today's start minus the days
//!   kept) and deletes the default partition's rows before it.
//! - A frame's key is forgotten only once no partition that could hold its rows remains: a key
//!   without its rows would let a replay store the frame again next to the stored one.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};

use crate::error::SinkError;
use crate::tables::{DETECTIONS, FRAMES, FRAME_KEYS};

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub days_ahead: u32,
    /// Whole days kept before today; 0 keeps everything.
    pub retention_days: u32,
}

/// One end of a range partition; `None` is MINVALUE (for `from`) or MAXVALUE (for `to`).
pub type Edge = Option<DateTime<Utc>>;

#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Default,
    Range { from: Edge, to: Edge },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub name: String,
    pub bound: Bound,
}

/// One day's partition to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Day>,
    pub drop: Vec<String>,
    /// Rows before this go (retention), from the default partition too.
    pub cutoff: Option<DateTime<Utc>>,
    /// Keys of frames captured before this can be forgotten.
    pub forget_keys_before: Option<DateTime<Utc>>,
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// What to make and drop for `table`, given its partitions now.
pub fn plan(table: &str, now: DateTime<Utc>, settings: Settings, existing: &[Partition]) -> Plan {
    let today = now.date_naive();
    let cutoff = (settings.retention_days > 0).then(|| midnight(today - Days::new(settings.retention_days.into())));
    let ranges: Vec<(&str, Edge, Edge)> = existing
        .iter()
        .filter_map(|p| match p.bound {
            Bound::Range { from, to } => Some((p.name.as_str(), from, to)),
            Bound::Default => None,
        })
        .collect();
    let dropped = |to: Edge| matches!((to, cutoff), (Some(to), Some(c)) if to <= c);
    let overlaps =
        |from: DateTime<Utc>, to: DateTime<Utc>| ranges.iter().any(|&(_, f, t)| f.is_none_or(|f| f < to) && t.is_none_or(|t| from < t));
    // Yesterday too: frames that waited out an outage arrive with yesterday's capture times.
    let create: Vec<Day> = (0..=settings.days_ahead as u64 + 1)
        .map(|i| today - Days::new(1) + Days::new(i))
        .map(|d| Day { name: format!("{table}_p{}", d.format("%Y%m%d")), from: midnight(d), to: midnight(d + Days::new(1)) })
        .filter(|d| cutoff.is_none_or(|c| d.from >= c) && !overlaps(d.from, d.to))
        .collect();
    let drop = ranges.iter().filter(|&&(_, _, to)| dropped(to)).map(|&(name, _, _)| name.to_string()).collect();
    // The earliest time a kept partition may hold; MINVALUE keeps every key.
    let kept_from = ranges.iter().filter(|&&(_, _, to)| !dropped(to)).map(|&(_, from, _)| from).min().unwrap_or(cutoff);
    let forget_keys_before = match (cutoff, kept_from) {
        (Some(c), Some(f)) => Some(c.min(f)),
        _ => None,
    };
    Plan { create, drop, cutoff, forget_keys_before }
}

/// A partition bound as `pg_get_expr` prints it with the session's time zone at UTC.
pub fn parse_bound(expr: &str) -> Option<Bound> {
    if expr == "DEFAULT" {
        return Some(Bound::Default);
    }
    let (from, to) = expr.strip_prefix("FOR VALUES FROM (")?.strip_suffix(')')?.split_once(") TO (")?;
    let value = |v: &str| -> Option<Edge> {
        match v {
            "MINVALUE" | "MAXVALUE" => Some(None),
            _ => {
                let text = v.strip_prefix('\'')?.strip_suffix('\'')?;
                DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok().map(|t| Some(t.with_timezone(&Utc)))
            }
        }
    };
    Some(Bound::Range { from: value(from)?, to: value(to)? })
}

fn literal(t: DateTime<Utc>) -> String {
    t.format("'%Y-%m-%d %H:%M:%S+00'").to_string()
}

async fn partitions_of(conn: &mut PgConnection, table: &str) -> Result<Vec<Partition>, SinkError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(name, expr)| match parse_bound(&expr) {
            Some(bound) => Ok(Partition { name, bound }),
            None => Err(SinkError::Schema(format!("partition {name} of {table} has bounds the sink does not know: {expr}"))),
        })
        .collect()
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub moved_from_default: u64,
    pub deleted_from_default: u64,
    pub keys_forgotten: u64,
}

/// One pass, in one transaction.
pub async fn maintain(pool: &PgPool, settings: Settings) -> Result<Report, SinkError> {
    // Any constant: the lock only keeps two sinks' passes apart.
    const LOCK: i64 = 0x5949_4b50;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL TimeZone = 'UTC'").execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LOCK).execute(&mut *tx).await?;
    // The database's clock, so that sinks on machines whose clocks differ agree on the days.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    let mut plans = Vec::new();
    for table in [FRAMES.name, DETECTIONS.name] {
        let existing = partitions_of(&mut tx, table).await?;
        let default = existing.iter().find(|p| p.bound == Bound::Default).map(|p| p.name.clone());
        plans.push((table, plan(table, now, settings, &existing), default));
    }
    if plans.iter().any(|(_, p, _)| !p.create.is_empty() || !p.drop.is_empty()) {
        // Attaching and dropping partitions while a query locks them one by one in its own order
        // can deadlock with it: both tables are taken whole first, so queries and writes wait for
        // this pass (milliseconds; a day at a time) instead.
        let lock = format!("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE", FRAMES.name, DETECTIONS.name);
        sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *tx).await?;
    }
    let mut report = Report::default();
    let mut forget = None;
    for (table, plan, default) in plans {
        for day in &plan.create {
            let (from, to) = (literal(day.from), literal(day.to));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {} (LIKE {table} INCLUDING DEFAULTS)", day.name)))
                .execute(&mut *tx)
                .await?;
            if let Some(default) = &default {
                let moved = format!(
                    "WITH moved AS (DELETE FROM {default} WHERE captured_at >= {from} AND captured_at < {to} RETURNING *)
                     INSERT INTO {} SELECT * FROM moved",
                    day.name
                );
                report.moved_from_default += sqlx::query(sqlx::AssertSqlSafe(moved)).execute(&mut *tx).await?.rows_affected();
            }
            let attach = format!("ALTER TABLE {table} ATTACH PARTITION {} FOR VALUES FROM ({from}) TO ({to})", day.name);
            sqlx::query(sqlx::AssertSqlSafe(attach)).execute(&mut *tx).await?;
            report.created.push(day.name.clone());
        }
        for name in &plan.drop {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}"))).execute(&mut *tx).await?;
            report.dropped.push(name.clone());
        }
        if let (Some(cutoff), Some(default)) = (plan.cutoff, &default) {
            let delete = format!("DELETE FROM {default} WHERE captured_at < {}", literal(cutoff));
            report.deleted_from_default += sqlx::query(sqlx::AssertSqlSafe(delete)).execute(&mut *tx).await?.rows_affected();
        }
        if table == FRAMES.name {
            forget = plan.forget_keys_before;
        }
    }
    if let Some(before) = forget {
        let delete = format!("DELETE FROM {} WHERE captured_at < {}", FRAME_KEYS.name, literal(before));
        report.keys_forgotten = sqlx::query(sqlx::AssertSqlSafe(delete)).execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(report)
}

/// A pass now, then one every hour for as long as the sink runs. A pass that fails is logged and
/// tried again at the next: until then rows outside the days made land in the default partition.
pub async fn keep(pool: PgPool, settings: Settings) {
    let pass = move |pool: PgPool| async move {
        match maintain(&pool, settings).await {
            Ok(r) => tracing::info!(
                created = ?r.created,
                dropped = ?r.dropped,
                moved_from_default = r.moved_from_default,
                deleted_from_default = r.deleted_from_default,
                keys_forgotten = r.keys_forgotten,
                "partitions maintained"
            ),
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed; rows outside the days made go to the default partition"),
        }
    };
    pass(pool.clone()).await;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        every.tick().await;
        loop {
            every.tick().await;
            pass(pool.clone()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(name: &str, from: Option<&str>, to: Option<&str>) -> Partition {
        Partition { name: name.into(), bound: Bound::Range { from: from.map(at), to: to.map(at) } }
    }

    fn default() -> Partition {
        Partition { name: "frames_default".into(), bound: Bound::Default }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.create.iter().map(|d| d.name.as_str()).collect()
    }

    const NOW: &str = "2026-12-02T13:45:00Z";

    #[test]
    fn bounds_as_postgres_prints_them() {
        assert_eq!(parse_bound("DEFAULT"), Some(Bound::Default));
        assert_eq!(
            parse_bound("FOR VALUES FROM ('2026-12-02 00:00:00+00') TO ('2026-12-03 00:00:00+00')"),
            Some(Bound::Range { from: Some(at("2026-12-02T00:00:00Z")), to: Some(at("2026-12-03T00:00:00Z")) })
        );
        assert_eq!(
            parse_bound("FOR VALUES FROM (MINVALUE) TO ('2026-12-03 00:00:00.25+00')"),
            Some(Bound::Range { from: None, to: Some(at("2026-12-03T00:00:00.25Z")) })
        );
        assert_eq!(parse_bound("FOR VALUES IN ('a')"), None, "not a range");
        assert_eq!(parse_bound("FOR VALUES FROM ('yesterday') TO (MAXVALUE)"), None);
    }

    #[test]
    fn a_fresh_store_gets_yesterday_today_and_the_days_ahead() {
        let p = plan("frames", at(NOW), Settings { days_ahead: 2, retention_days: 0 }, &[default()]);
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261203", "frames_p20261204"]);
        assert_eq!((p.create[1].from, p.create[1].to), (at("2026-12-02T00:00:00Z"), at("2026-12-03T00:00:00Z")));
        assert!(p.drop.is_empty() && p.cutoff.is_none() && p.forget_keys_before.is_none(), "{p:?}");
    }

    #[test]
    fn days_already_made_or_covered_by_history_are_not_made_again() {
        let existing = [
            default(),
            range("frames_history", None, Some("2026-12-03T00:00:00Z")),
            range("frames_p20261203", Some("2026-12-03T00:00:00Z"), Some("2026-12-04T00:00:00Z")),
        ];
        let p = plan("frames", at(NOW), Settings { days_ahead: 3, retention_days: 0 }, &existing);
        assert_eq!(names(&p), ["frames_p20261204", "frames_p20261205"]);
    }

    #[test]
    fn a_partition_overlapping_part_of_a_day_keeps_that_day_from_being_made() {
        let existing = [range("odd", Some("2026-12-03T12:00:00Z"), Some("2026-12-04T06:00:00Z"))];
        let p = plan("frames", at(NOW), Settings { days_ahead: 3, retention_days: 0 }, &existing);
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261205"]);
    }

    #[test]
    fn retention_drops_whole_days_before_the_cutoff_and_forgets_their_keys() {
        let existing = [
            default(),
            range("frames_p20261128", Some("2026-11-28T00:00:00Z"), Some("2026-11-29T00:00:00Z")),
            range("frames_p20261129", Some("2026-11-29T00:00:00Z"), Some("2026-11-30T00:00:00Z")),
            range("frames_p20261130", Some("2026-11-30T00:00:00Z"), Some("2026-12-01T00:00:00Z")),
        ];
        // Today and the 2 days before it are kept: rows from 2026-11-30 on.
        let p = plan("frames", at(NOW), Settings { days_ahead: 1, retention_days: 2 }, &existing);
        assert_eq!(p.cutoff, Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(p.drop, ["frames_p20261128", "frames_p20261129"]);
        assert_eq!(p.forget_keys_before, Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261203"]);
    }

    #[test]
    fn retention_never_makes_a_day_it_would_drop() {
        let p = plan("frames", at(NOW), Settings { days_ahead: 1, retention_days: 1 }, &[]);
        assert_eq!(p.cutoff, Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261203"]);
        let p = plan("frames", at("2026-12-02T00:00:00Z"), Settings { days_ahead: 0, retention_days: 0 }, &[]);
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202"], "yesterday and today");
    }

    #[test]
    fn keys_stay_while_a_kept_partition_may_hold_their_rows() {
        // History reaches back to MINVALUE and ends after the cutoff: it is kept, and so is every key.
        let existing = [range("frames_history", None, Some("2026-12-01T00:00:00Z"))];
        let p = plan("frames", at(NOW), Settings { days_ahead: 1, retention_days: 3 }, &existing);
        assert!(p.drop.is_empty());
        assert_eq!(p.forget_keys_before, None);
        // Once it ends before the cutoff it is dropped, and keys before the cutoff go.
        let p = plan("frames", at(NOW), Settings { days_ahead: 1, retention_days: 1 }, &existing);
        assert_eq!(p.drop, ["frames_history"]);
        assert_eq!(p.forget_keys_before, Some(at("2026-12-01T00:00:00Z")));
        // A kept partition that straddles the cutoff holds keys back to its own start.
        let existing = [range("wide", Some("2026-11-25T00:00:00Z"), Some("2026-12-02T00:00:00Z"))];
        let p = plan("frames", at(NOW), Settings { days_ahead: 1, retention_days: 1 }, &existing);
        assert!(p.drop.is_empty());
        assert_eq!(p.forget_keys_before, Some(at("2026-11-25T00:00:00Z")));
    }
}
