//! The sqlx 0.8 checks and pool metrics (`garrison_health::sqlx_0_8`) against the real
//! PostgreSQL, MariaDB and an SQLite file, as the sqlx 0.9 ones are in `databases.rs`.
#![cfg(all(
    feature = "postgres-0_8",
    feature = "mysql-0_8",
    feature = "sqlite-0_8"
))]

use std::time::Duration;

use garrison_health::sqlx_0_8::{CheckedDatabase, DbMetrics, PoolCheck};
use garrison_health::{CheckOptions, HealthRegistry, Status};
use garrison_metrics::{Format, MetricsRegistry};
use sqlx_0_8::Pool;

fn env_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

async fn connect<DB: sqlx_0_8::Database>(what: &str, var: &str, url: &str) -> Pool<DB> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        sqlx_0_8::pool::PoolOptions::<DB>::new()
            .max_connections(4)
            .connect(url),
    )
    .await
    {
        Ok(Ok(p)) => p,
        other => panic!(
            "{what} at {var} ({url}) does not answer: {:?}; start it with `just services`",
            other.map(|r| r.map(drop))
        ),
    }
}

/// One connection held by the application: the check answers `pass` with 1 of 4 in use,
/// and the pool's metrics say so.
async fn healthy<DB: CheckedDatabase>(name: &str, pool: Pool<DB>) {
    let held = pool.acquire().await.unwrap();
    let health = HealthRegistry::new();
    health
        .register(
            name,
            PoolCheck::new(pool.clone()),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let report = health.report(garrison_health::Probe::Deep);
    assert_eq!(report.status(), Status::Pass, "{report:?}");
    // sqlx gives the check's connection back to the pool in a task of its own: wait (a
    // bounded loop, no timing claim) until only the application's is in use again
    for _ in 0..1000 {
        if pool.size() - pool.num_idle() as u32 == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let metrics = MetricsRegistry::new();
    let db = DbMetrics::new(&metrics).instrument(name, pool.clone());
    let second = db.acquire().await.unwrap();
    let text = metrics.render(Format::Prometheus);
    assert!(
        text.contains(&format!(
            "db_client_connection_usage{{db_client_connection_pool_name=\"{name}\",db_client_connection_state=\"used\"}} 2"
        )),
        "{text}"
    );
    drop((held, second));
}

#[tokio::test]
async fn postgres_pools_of_sqlx_0_8_are_checked_and_measured() {
    let url = env_url(
        "GARRISON_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let pool: Pool<sqlx_0_8::Postgres> =
        connect("PostgreSQL", "GARRISON_TEST_POSTGRES_URL", &url).await;
    healthy("pg08", pool).await;
}

#[tokio::test]
async fn mariadb_pools_of_sqlx_0_8_are_checked_and_measured() {
    let url = env_url(
        "GARRISON_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let pool: Pool<sqlx_0_8::MySql> = connect("MariaDB", "GARRISON_TEST_MYSQL_URL", &url).await;
    healthy("maria08", pool).await;
}

#[tokio::test]
async fn sqlite_pools_of_sqlx_0_8_are_checked_and_measured() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let pool: Pool<sqlx_0_8::Sqlite> = connect("SQLite", "-", &url).await;
    healthy("lite08", pool).await;
}
