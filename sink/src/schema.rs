//! The database schema: migrations embedded from `migrations/`, and the checks that the database
//! holds exactly the schema this build knows: its migration version, and the tables as
//! [`crate::tables`] describes them.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::error::SinkError;
use crate::tables::{Table, DETECTIONS, FRAMES, FRAME_KEYS, TRACK_OBSERVATIONS};

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

fn latest_known() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

pub async fn migrate(pool: &PgPool) -> Result<i64, SinkError> {
    MIGRATOR.run(pool).await.map_err(|e| SinkError::Schema(e.to_string()))?;
    Ok(latest_known())
}

/// Refuses a database whose schema is older (not migrated) or newer (a later sink migrated it)
/// than this build's.
pub async fn check(pool: &PgPool) -> Result<i64, SinkError> {
    let known = latest_known();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let applied: Option<i64> =
        if exists { sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await? } else { None };
    match applied {
        Some(v) if v == known => {
            for table in [&FRAME_KEYS, &FRAMES, &DETECTIONS, &TRACK_OBSERVATIONS] {
                check_table(pool, table).await?;
            }
            Ok(v)
        }
        Some(v) if v > known => {
            Err(SinkError::Schema(format!("the database is at schema version {v}, newer than this sink's {known}; upgrade the sink")))
        }
        Some(v) => Err(SinkError::Schema(format!("the database is at schema version {v}, this sink needs {known}; run `sink migrate`"))),
        None => Err(SinkError::Schema(format!("the database has no schema; run `sink migrate` (this sink needs version {known})"))),
    }
}

/// The table has every column the description writes, of its type, and any other column fills
/// itself (a default, or NULL): the migrations and the description agree.
async fn check_table(pool: &PgPool, table: &Table) -> Result<(), SinkError> {
    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull AND NOT a.atthasdef
         FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(table.name)
    .fetch_all(pool)
    .await?;
    let mut wrong = Vec::new();
    for c in table.columns {
        match columns.iter().find(|(name, _, _)| name == c.name) {
            None => wrong.push(format!("column {} is missing", c.name)),
            Some((_, ty, _)) if ty != c.kind.sql() => wrong.push(format!("column {} is {ty}, the sink writes {}", c.name, c.kind.sql())),
            Some(_) => {}
        }
    }
    for (name, _, required) in &columns {
        if *required && !table.columns.iter().any(|c| c.name == name) {
            wrong.push(format!("column {name} needs a value the sink does not write"));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(SinkError::Schema(format!("table {} does not match this sink: {}", table.name, wrong.join("; "))))
}
