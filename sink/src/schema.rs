//! The database schema: migrations embedded from `migrations/`, and the check that the database
//! holds exactly the schema this build knows.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::error::SinkError;

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
    let applied: Option<i64> = if exists {
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?
    } else {
        None
    };
    match applied {
        Some(v) if v == known => Ok(v),
        Some(v) if v > known => Err(SinkError::Schema(format!(
            "the database is at schema version {v}, newer than this sink's {known}; upgrade the sink"
        ))),
        Some(v) => Err(SinkError::Schema(format!(
            "the database is at schema version {v}, this sink needs {known}; run `sink migrate`"
        ))),
        None => Err(SinkError::Schema(format!(
            "the database has no schema; run `sink migrate` (this sink needs version {known})"
        ))),
    }
}
