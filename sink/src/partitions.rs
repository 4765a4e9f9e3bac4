//! The store's upkeep (migrations 3 to 5): `frames`, `detections` and `track_observations` are
//! partitioned by UTC day; the days are made ahead of time and dropped past the retention by the
//! sinks themselves, at start and every hour, one sink at a time (a session advisory lock: the
//! others skip the pass). Why not
//! pg_partman: it is an extension to install in the server and a job to schedule for what comes
//! down to a few statements a day, and the sink already holds what decides them. The policy (days
//! ahead, days kept) is one row of `store_policy`, set with `sink policy`, so sinks side by side
//! cannot disagree on it.
//!
//! What to do is [`plan`]'s, a pure function of the clock, the policy, the partitions there are and
//! the days the default partition holds rows for; [`maintain`] carries it out, holding a lock that
//! blocks writers or readers only for DDL:
//! - A day is made where no partition covers any of it: as a table of its own with the day's bound
//!   as a CHECK (so attaching it scans nothing), filled with the default partition's rows of that
//!   day in batches, then attached in a short transaction that first takes the default partition
//!   and moves what arrived there meanwhile (normally nothing: the admission window keeps rows of
//!   days not made out of the store).
//! - Retention detaches whole partitions that end before the cutoff (today's start minus the days
//!   kept), each in a short transaction, then drops them; the default partition's rows before the
//!   cutoff are deleted in batches.
//! - A frame's key is forgotten only once no partition that could hold its rows remains (a key
//!   without its rows would let a replay store the frame again), in batches after the DDL; so are
//!   the per-minute rollup before the cutoff and the tracks last seen before it.
//!
//! Each DDL transaction waits at most `LOCK_WAIT` for its locks (a long query on the tables holds
//! it off; it is tried again, then at the next pass) and says how long it took.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::watch;

use crate::error::SinkError;
use crate::events;
use crate::rollup;
use crate::tables::{DETECTIONS, FRAMES, FRAME_KEYS, TRACK_OBSERVATIONS};
use crate::telemetry;

/// The store's policy: one row of `store_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub days_ahead: u32,
    /// Whole days kept before today; 0 keeps everything.
    pub retention_days: u32,
}

impl Policy {
    /// Rows captured before this are past the retention, if there is one.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.retention_days > 0).then(|| midnight(now.date_naive() - Days::new(self.retention_days.into())))
    }
}

pub async fn policy(conn: &mut PgConnection) -> Result<Policy, SinkError> {
    let (days_ahead, retention_days): (i32, i32) =
        sqlx::query_as("SELECT days_ahead, retention_days FROM store_policy").fetch_one(&mut *conn).await?;
    Ok(Policy { days_ahead: days_ahead as u32, retention_days: retention_days as u32 })
}

/// Sets what is given; the policy as it then is. The database checks the ranges.
pub async fn set_policy(pool: &PgPool, days_ahead: Option<u32>, retention_days: Option<u32>) -> Result<Policy, SinkError> {
    let mut conn = pool.acquire().await?;
    if days_ahead.is_some() || retention_days.is_some() {
        sqlx::query(
            "UPDATE store_policy SET days_ahead = coalesce($1, days_ahead), retention_days = coalesce($2, retention_days), updated_at = now()",
        )
        .bind(days_ahead.map(|d| d as i32))
        .bind(retention_days.map(|d| d as i32))
        .execute(&mut *conn)
        .await?;
    }
    policy(&mut conn).await
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

/// What to make and drop for `table`, given its partitions now and the days its default partition
/// holds rows for.
pub fn plan(table: &str, now: DateTime<Utc>, policy: Policy, existing: &[Partition], in_default: &[NaiveDate]) -> Plan {
    let today = now.date_naive();
    let cutoff = policy.cutoff(now);
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
    let last = today + Days::new(policy.days_ahead.into());
    // Yesterday too: frames that waited out an outage arrive with yesterday's capture times. And
    // the days of rows in the default partition, within the retention and the days ahead.
    let days: BTreeSet<NaiveDate> = (0..=policy.days_ahead as u64 + 1)
        .map(|i| today - Days::new(1) + Days::new(i))
        .chain(in_default.iter().copied().filter(|d| *d <= last))
        .collect();
    let create: Vec<Day> = days
        .into_iter()
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
    /// Another sink held the pass: nothing was done.
    pub skipped: bool,
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub moved_from_default: u64,
    pub deleted_from_default: u64,
    pub keys_forgotten: u64,
    pub minutes_forgotten: u64,
    pub tracks_forgotten: u64,
    /// Zone events and occupancy samples dated before the cutoff.
    pub events_forgotten: u64,
    /// The longest DDL transaction: the most any query or write waited for this pass.
    pub longest_lock: Duration,
    /// Rows left in each table's default partition: frames of days not made.
    pub in_default: Vec<(String, u64)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.skipped {
            return f.write_str("store maintenance skipped: another sink is running the pass");
        }
        write!(
            f,
            "store maintained created={:?} dropped={:?} moved_from_default={} deleted_from_default={} keys_forgotten={} minutes_forgotten={} tracks_forgotten={} events_forgotten={} longest_lock_ms={} in_default={}",
            self.created,
            self.dropped,
            self.moved_from_default,
            self.deleted_from_default,
            self.keys_forgotten,
            self.minutes_forgotten,
            self.tracks_forgotten,
            self.events_forgotten,
            self.longest_lock.as_millis(),
            self.in_default.iter().map(|(_, n)| n).sum::<u64>()
        )
    }
}

/// Rows a batched statement moves or deletes at a time.
const BATCH: i64 = 10_000;
/// How long a DDL transaction waits for its locks before it gives up (and is tried again).
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Any constant: the lock only keeps two sinks' passes apart.
const PASS_LOCK: i64 = 0x5949_4b50;

/// One pass, on a connection of its own.
pub async fn maintain(pool: &PgPool) -> Result<Report, SinkError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TimeZone = 'UTC'").execute(&mut *conn).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(PASS_LOCK).fetch_one(&mut *conn).await?;
    if !locked {
        return Ok(Report { skipped: true, ..Report::default() });
    }
    let result = pass(&mut conn).await;
    // A connection that failed mid-pass may be gone: its session lock went with it.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(PASS_LOCK).execute(&mut *conn).await;
    result
}

async fn pass(conn: &mut PoolConnection<Postgres>) -> Result<Report, SinkError> {
    // The database's clock, so that sinks on machines whose clocks differ agree on the days.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut **conn).await?;
    let policy = policy(conn).await?;
    let mut report = Report::default();
    let mut forget = None;
    for table in [FRAMES.name, DETECTIONS.name, TRACK_OBSERVATIONS.name] {
        let existing = partitions_of(conn, table).await?;
        let default = existing.iter().find(|p| p.bound == Bound::Default).map(|p| p.name.clone());
        let in_default: Vec<NaiveDate> = match &default {
            Some(d) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT DISTINCT (captured_at AT TIME ZONE 'UTC')::date FROM {d}")))
                    .fetch_all(&mut **conn)
                    .await?
            }
            None => Vec::new(),
        };
        let plan = plan(table, now, policy, &existing, &in_default);
        for day in &plan.create {
            make_day(conn, table, default.as_deref(), day, &mut report).await?;
        }
        for name in &plan.drop {
            let detach = format!("ALTER TABLE {table} DETACH PARTITION {name}");
            ddl(conn, &[detach], &mut report).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}"))).execute(&mut **conn).await?;
            report.dropped.push(name.clone());
        }
        if let (Some(cutoff), Some(default)) = (plan.cutoff, &default) {
            report.deleted_from_default += batched(conn, default, "captured_at", cutoff).await?;
        }
        if let Some(default) = &default {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {default}"))).fetch_one(&mut **conn).await?;
            report.in_default.push((table.to_string(), n as u64));
        }
        if table == FRAMES.name {
            forget = plan.forget_keys_before;
            if let Some(cutoff) = plan.cutoff {
                report.minutes_forgotten = batched(conn, rollup::MINUTES, "minute", cutoff).await?;
                // A track is forgotten once its last observation is past the cutoff; one that
                // straddles it keeps its whole summary while its early observations go.
                report.tracks_forgotten = batched(conn, rollup::TRACKS, "last_seen", cutoff).await?;
                for table in events::TABLES {
                    report.events_forgotten += batched(conn, table, "captured_at", cutoff).await?;
                }
            }
        }
    }
    if let Some(before) = forget {
        report.keys_forgotten = batched(conn, FRAME_KEYS.name, "captured_at", before).await?;
    }
    Ok(report)
}

/// Makes one day's partition of `table`: a table of its own with the day's bound as a CHECK, the
/// default partition's rows of that day moved in (batches), then attached.
async fn make_day(conn: &mut PgConnection, table: &str, default: Option<&str>, day: &Day, report: &mut Report) -> Result<(), SinkError> {
    let (name, from, to) = (&day.name, literal(day.from), literal(day.to));
    let range = format!("captured_at >= {from} AND captured_at < {to}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE IF NOT EXISTS {name} (LIKE {table} INCLUDING DEFAULTS)")))
        .execute(&mut *conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN ALTER TABLE {name} ADD CONSTRAINT {name}_day CHECK ({range}); EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )))
    .execute(&mut *conn)
    .await?;
    let move_some = |default: &str| {
        format!(
            "WITH moved AS (DELETE FROM {default} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {default} WHERE {range} LIMIT {BATCH})) RETURNING *)
             INSERT INTO {name} SELECT * FROM moved"
        )
    };
    if let Some(default) = default {
        loop {
            let moved = sqlx::query(sqlx::AssertSqlSafe(move_some(default))).execute(&mut *conn).await?.rows_affected();
            report.moved_from_default += moved;
            if moved < BATCH as u64 {
                break;
            }
        }
    }
    // What reached the default partition since is moved under its lock, then the day attached.
    let mut statements = Vec::new();
    if let Some(default) = default {
        statements.push(format!("LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE"));
        statements.push(move_some(default));
    }
    statements.push(format!("ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"));
    ddl(conn, &statements, report).await?;
    report.created.push(name.clone());
    Ok(())
}

/// Runs DDL in one short transaction that waits at most `LOCK_WAIT` for its locks, tried three
/// times; notes how long it took.
async fn ddl(conn: &mut PgConnection, statements: &[String], report: &mut Report) -> Result<(), SinkError> {
    let mut tries = 0;
    loop {
        let t = Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{}ms'", LOCK_WAIT.as_millis()))).execute(&mut *tx).await?;
        let mut done = Ok(());
        for sql in statements {
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut *tx).await {
                done = Err(SinkError::from(e));
                break;
            }
        }
        let done = match done {
            Ok(()) => tx.commit().await.map_err(SinkError::from),
            Err(e) => Err(e),
        };
        report.longest_lock = report.longest_lock.max(t.elapsed());
        tries += 1;
        match done {
            Ok(()) => return Ok(()),
            Err(e) if e.db_fault() == Some(crate::error::DbFault::Transient) && tries < 3 => {
                tracing::warn!(error = %e, statement = %statements.last().map(String::as_str).unwrap_or(""), "partition DDL waited too long for its locks; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Deletes `table`'s rows whose `column` is before `before`, `BATCH` at a time, each batch in a
/// transaction of its own; how many.
async fn batched(conn: &mut PgConnection, table: &str, column: &str, before: DateTime<Utc>) -> Result<u64, SinkError> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {column} < {} ORDER BY {column} LIMIT {BATCH}))",
        literal(before)
    );
    let mut total = 0;
    loop {
        let n = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(&mut *conn).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// What the loop needs of the store: the database's clock (as an offset from this host's) and the
/// retention's cutoff, for the admission window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreClock {
    pub offset: chrono::Duration,
    pub cutoff: Option<DateTime<Utc>>,
}

impl StoreClock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

async fn read_clock(pool: &PgPool) -> Result<StoreClock, SinkError> {
    let mut conn = pool.acquire().await?;
    let before = Utc::now();
    let db: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *conn).await?;
    let local = before + (Utc::now() - before) / 2;
    let policy = policy(&mut conn).await?;
    Ok(StoreClock { offset: db - local, cutoff: policy.cutoff(db) })
}

/// One pass, logged and counted.
async fn pass_and_report(pool: &PgPool) {
    let t = Instant::now();
    match maintain(pool).await {
        Ok(r) if r.skipped => {
            metrics::counter!(telemetry::MAINTENANCE_PASSES, "result" => "skipped").increment(1);
            tracing::info!("{r}");
        }
        Ok(r) => {
            metrics::counter!(telemetry::MAINTENANCE_PASSES, "result" => "ok").increment(1);
            metrics::gauge!(telemetry::MAINTENANCE_LAST_SUCCESS).set(Utc::now().timestamp() as f64);
            metrics::gauge!(telemetry::MAINTENANCE_LONGEST_LOCK).set(r.longest_lock.as_secs_f64());
            for (table, n) in &r.in_default {
                metrics::gauge!(telemetry::DEFAULT_PARTITION_ROWS, "table" => table.clone()).set(*n as f64);
            }
            tracing::info!(took_ms = t.elapsed().as_millis() as u64, "{r}");
            let in_default = r.in_default.iter().map(|(_, n)| n).sum::<u64>();
            if in_default > 0 {
                tracing::warn!(in_default, "rows in the default partitions: frames of days with no partition (see docs/operations.md)");
            }
        }
        Err(e) => {
            metrics::counter!(telemetry::MAINTENANCE_PASSES, "result" => "failed").increment(1);
            tracing::warn!(error = %e, "store maintenance failed; it is tried again within the hour");
        }
    }
}

/// Reads the store's clock and policy now and every hour for as long as the sink runs, and (if
/// `maintain`) runs a pass each time; the clock goes to the returned watch. The first reading and
/// pass are done when this returns.
pub async fn keep(pool: PgPool, maintain: bool) -> Result<watch::Receiver<StoreClock>, SinkError> {
    if maintain {
        pass_and_report(&pool).await;
    }
    let (tx, rx) = watch::channel(read_clock(&pool).await?);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        every.tick().await;
        loop {
            every.tick().await;
            if maintain {
                pass_and_report(&pool).await;
            }
            match read_clock(&pool).await {
                Ok(clock) => {
                    tx.send_replace(clock);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the database's clock and policy; keeping the last"),
            }
        }
    });
    Ok(rx)
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
        let p = plan("frames", at(NOW), Policy { days_ahead: 2, retention_days: 0 }, &[default()], &[]);
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
        let p = plan("frames", at(NOW), Policy { days_ahead: 3, retention_days: 0 }, &existing, &[]);
        assert_eq!(names(&p), ["frames_p20261204", "frames_p20261205"]);
    }

    #[test]
    fn a_partition_overlapping_part_of_a_day_keeps_that_day_from_being_made() {
        let existing = [range("odd", Some("2026-12-03T12:00:00Z"), Some("2026-12-04T06:00:00Z"))];
        let p = plan("frames", at(NOW), Policy { days_ahead: 3, retention_days: 0 }, &existing, &[]);
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
        let p = plan("frames", at(NOW), Policy { days_ahead: 1, retention_days: 2 }, &existing, &[]);
        assert_eq!(p.cutoff, Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(p.drop, ["frames_p20261128", "frames_p20261129"]);
        assert_eq!(p.forget_keys_before, Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261203"]);
    }

    #[test]
    fn retention_never_makes_a_day_it_would_drop() {
        let p = plan("frames", at(NOW), Policy { days_ahead: 1, retention_days: 1 }, &[], &[]);
        assert_eq!(p.cutoff, Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202", "frames_p20261203"]);
        let p = plan("frames", at("2026-12-02T00:00:00Z"), Policy { days_ahead: 0, retention_days: 0 }, &[], &[]);
        assert_eq!(names(&p), ["frames_p20261201", "frames_p20261202"], "yesterday and today");
    }

    #[test]
    fn days_the_default_partition_holds_are_made_within_the_retention_and_the_days_ahead() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let policy = Policy { days_ahead: 1, retention_days: 10 };
        let held = [day("2026-11-20"), day("2026-11-27"), day("2026-12-01"), day("2026-12-04"), day("2036-12-02")];
        let p = plan("frames", at(NOW), policy, &[default()], &held);
        // 11-20 is past the retention (it goes), 12-04 and 2036 beyond the days ahead (they stay).
        assert_eq!(names(&p), ["frames_p20261127", "frames_p20261201", "frames_p20261202", "frames_p20261203"]);
    }

    #[test]
    fn keys_stay_while_a_kept_partition_may_hold_their_rows() {
        // History reaches back to MINVALUE and ends after the cutoff: it is kept, and so is every key.
        let existing = [range("frames_history", None, Some("2026-12-01T00:00:00Z"))];
        let p = plan("frames", at(NOW), Policy { days_ahead: 1, retention_days: 3 }, &existing, &[]);
        assert!(p.drop.is_empty());
        assert_eq!(p.forget_keys_before, None);
        // Once it ends before the cutoff it is dropped, and keys before the cutoff go.
        let p = plan("frames", at(NOW), Policy { days_ahead: 1, retention_days: 1 }, &existing, &[]);
        assert_eq!(p.drop, ["frames_history"]);
        assert_eq!(p.forget_keys_before, Some(at("2026-12-01T00:00:00Z")));
        // A kept partition that straddles the cutoff holds keys back to its own start.
        let existing = [range("wide", Some("2026-11-25T00:00:00Z"), Some("2026-12-02T00:00:00Z"))];
        let p = plan("frames", at(NOW), Policy { days_ahead: 1, retention_days: 1 }, &existing, &[]);
        assert!(p.drop.is_empty());
        assert_eq!(p.forget_keys_before, Some(at("2026-11-25T00:00:00Z")));
    }
}
