//! sink: Kafka detection messages in, PostgreSQL rows out. See `sink --help`.

mod batch;
mod commit;
mod config;
mod consume;
mod error;
mod pipeline;
mod schema;
mod tables;
mod telemetry;
mod validate;
mod write;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use config::{Cli, Command, DbArgs};
use error::SinkError;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(retryable = e.retryable(), "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), SinkError> {
    match cli.command {
        Command::Migrate(db) => {
            let pool = connect(&db, 1).await?;
            let version = schema::migrate(&pool).await?;
            tracing::info!(version, "schema is up to date");
            Ok(())
        }
        Command::Run(args) => {
            args.validate().map_err(SinkError::Config)?;
            if let Some(addr) = args.metrics_addr {
                telemetry::serve(addr)?;
            }
            // The writers, plus one for reading stored offsets at a rebalance.
            let pool = connect(&args.db, args.writers as u32 + 1).await?;
            let version = schema::check(&pool).await?;
            tracing::info!(version, database = %args.db.redacted_url(), "schema checked");
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received; finishing the current batch");
                let _ = tx.send(true);
            });
            pipeline::run(&args, &pool, rx).await
        }
    }
}

async fn connect(db: &DbArgs, connections: u32) -> Result<PgPool, SinkError> {
    PgPoolOptions::new()
        .max_connections(connections)
        // Short, so an outage surfaces as an error (and the partitions pause) within seconds.
        .acquire_timeout(Duration::from_secs(3))
        .connect(&db.database_url)
        .await
        .map_err(|e| SinkError::Config(format!("cannot connect to PostgreSQL at {}: {e}", db.redacted_url())))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
