//! sink: Kafka detection messages in, PostgreSQL rows out. See `sink --help`.

mod batch;
mod config;
mod consume;
mod dead_letters;
mod decide;
mod epochs;
mod error;
mod events;
mod message;
mod offsets;
mod partition;
mod partitions;
mod pipeline;
mod recount;
mod rollup;
mod schema;
mod tables;
mod telemetry;
mod validate;
mod write;

use std::str::FromStr;
use std::time::Duration;

use common::telemetry::exit;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use config::{Cli, Command, DbArgs};
use error::{DbFault, SinkError};

#[tokio::main]
async fn main() {
    // First: every line from here on passes through the redaction.
    common::telemetry::init_logs();
    let (cli, given) = common::cli::parse::<Cli>();
    match run(cli).await {
        Ok(()) => exit(0),
        Err(e) => {
            tracing::error!(retryable = e.retryable(), "{}", given.name_variables(&e.to_string()));
            exit(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), SinkError> {
    match cli.command {
        Command::Migrate(db) => {
            let pool = connect(&db, 1, &[]).await?;
            let version = schema::migrate(&pool).await?;
            tracing::info!(version, "schema is up to date");
            Ok(())
        }
        Command::Policy(args) => {
            args.validate().map_err(SinkError::Config)?;
            let pool = connect(&args.db, 1, &[]).await?;
            schema::check(&pool).await?;
            let p = partitions::set_policy(&pool, args.days_ahead, args.retention_days).await?;
            println!("days_ahead={} retention_days={}", p.days_ahead, p.retention_days);
            Ok(())
        }
        Command::Maintain(db) => {
            let pool = connect(&db, 1, &[]).await?;
            schema::check(&pool).await?;
            println!("{}", partitions::maintain(&pool).await?);
            Ok(())
        }
        Command::Recount(args) => {
            args.validate().map_err(SinkError::Config)?;
            let rules = recount::load_rules(&args.rules)?;
            let pool = connect(&args.db, 2, &[]).await?;
            schema::check(&pool).await?;
            println!("{}", recount::run(&pool, &args.camera, &rules, args.from, args.to.unwrap_or_else(chrono::Utc::now)).await?);
            Ok(())
        }
        Command::Run(args) => {
            args.validate().map_err(SinkError::Config)?;
            let heartbeat = common::telemetry::Heartbeat::new("sink loop", Duration::from_secs(60));
            if let Some(addr) = args.metrics_addr {
                telemetry::serve(addr, heartbeat.clone()).map_err(SinkError::Config)?;
            }
            // The writers, one for reading stored offsets at a rebalance, one for the upkeep.
            let timeouts = [
                ("statement_timeout", format!("{}ms", args.statement_timeout_ms)),
                ("lock_timeout", format!("{}ms", args.lock_timeout_ms)),
            ];
            let pool = connect(&args.db, args.writers as u32 + 2, &timeouts).await?;
            let version = schema::check(&pool).await?;
            tracing::info!(version, database = %args.db.database_url.redacted(), "schema checked");
            let clock = partitions::keep(pool.clone(), args.maintain).await?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received; finishing the current batch (a second signal exits at once)");
                let _ = tx.send(true);
                wait_for_signal().await;
                tracing::warn!("second signal: exiting now (130); what was not committed is read again at the next start");
                exit(130);
            });
            pipeline::run(&args, &pool, clock, heartbeat, rx).await
        }
    }
}

/// A pool of `connections`, each with these session settings.
async fn connect(db: &DbArgs, connections: u32, settings: &[(&str, String)]) -> Result<PgPool, SinkError> {
    db.validate().map_err(SinkError::Config)?;
    // libpq's variable, which sqlx reads too when the URL has no password: hidden then, as the
    // URL's password would be (unless it is the user's name, which is shown).
    if let (Ok(password), Ok(url)) = (std::env::var("PGPASSWORD"), common::url::Url::parse(db.database_url.expose())) {
        let user = url.user.map(str::to_string).or_else(|| std::env::var("PGUSER").ok());
        if url.password.is_none() && user.as_deref() != Some(password.as_str()) {
            common::secret::hide(&password);
        }
    }
    // Away (refused, timed out, starting up, too many connections): the world's, exit 3; anything
    // else (a password, a database that does not exist, a certificate, the URL itself) is the
    // user's to fix, exit 2.
    let cannot = |e: sqlx::Error| {
        let why = format!("cannot connect to PostgreSQL at {}: {e}", db.database_url.redacted());
        match SinkError::Database(e).db_fault() {
            Some(DbFault::Transient) => SinkError::DatabaseAway(why),
            _ => SinkError::Config(why),
        }
    };
    let options =
        PgConnectOptions::from_str(db.database_url.expose()).map_err(cannot)?.options(settings.iter().map(|(k, v)| (*k, v.as_str())));
    // One connection first: its error says why (refused, the password, no such database), where
    // the pool's says only that it timed out.
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&options)).await {
        Err(_) => {
            return Err(SinkError::DatabaseAway(format!(
                "cannot connect to PostgreSQL at {}: no answer within 10 s",
                db.database_url.redacted()
            )))
        }
        Ok(Err(e)) => return Err(cannot(e)),
        Ok(Ok(probe)) => drop(probe.close().await),
    }
    PgPoolOptions::new()
        .max_connections(connections)
        // Short, so an outage surfaces as an error (and the partitions pause) within seconds.
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .map_err(cannot)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
