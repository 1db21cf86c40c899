//! The sqlx pool checks against the real PostgreSQL and MariaDB (`GARRISON_TEST_POSTGRES_URL`,
//! `GARRISON_TEST_MYSQL_URL`) and an SQLite file, and against databases that do not answer.
#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::net::SocketAddr;
use std::time::Duration;

mod common;
use common::{closed_port, serve, silent_listener};

use axum::body::Body;
use axum::Router;
use garrison_health::{CheckOptions, DbMetrics, Details, HealthRegistry, PoolCheck, Probe, Status};
use garrison_metrics::{Format, MetricsRegistry};
use http::{Request, StatusCode};
use serde_json::Value;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::Pool;
use tower::ServiceExt;

fn env_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn pg_url() -> String {
    env_url(
        "GARRISON_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn mysql_url() -> String {
    env_url(
        "GARRISON_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    )
}

/// A pool on the shared server, failing loudly when it does not answer.
async fn pg(max: u32) -> sqlx::PgPool {
    let url = pg_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        PgPoolOptions::new().max_connections(max).connect(&url),
    )
    .await
    {
        Ok(Ok(p)) => p,
        other => panic!(
            "PostgreSQL at GARRISON_TEST_POSTGRES_URL ({url}) does not answer: {other:?}; start it with `just services`"
        ),
    }
}

async fn mysql(max: u32) -> sqlx::MySqlPool {
    let url = mysql_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        MySqlPoolOptions::new().max_connections(max).connect(&url),
    )
    .await
    {
        Ok(Ok(p)) => p,
        other => panic!(
            "MariaDB at GARRISON_TEST_MYSQL_URL ({url}) does not answer: {other:?}; start it with `just services`"
        ),
    }
}

async fn sqlite(dir: &tempfile::TempDir, max: u32) -> sqlx::SqlitePool {
    let path = dir.path().join("health.db");
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("an SQLite file in a temporary directory opens")
}

/// One GET over a real socket.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn registry() -> HealthRegistry {
    HealthRegistry::builder().token("t0ken").build()
}

/// A healthy pool with one connection held by the application: real round trip, real
/// figures.
async fn healthy<DB>(name: &str, pool: Pool<DB>)
where
    DB: garrison_health::CheckedDatabase,
{
    let held = pool.acquire().await.unwrap();
    let health = registry();
    health
        .register(
            name,
            PoolCheck::new(pool.clone()),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let addr = serve(health.router()).await;

    let (status, body) = get(addr, "/health", Some("t0ken")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pass", "{body}");
    let rt = &body["checks"][format!("{name}:responseTime")][0];
    assert_eq!(rt["status"], "pass");
    assert_eq!(rt["observedUnit"], "ms");
    assert_eq!(rt["componentType"], "datastore");
    assert!(rt["observedValue"].as_f64().unwrap() >= 0.0, "{rt}");
    let util = &body["checks"][format!("{name}:utilization")][0];
    assert_eq!(util["observedValue"], 25, "1 of 4 in use: {util}");
    assert_eq!(util["observedUnit"], "percent");
    let conns = &body["checks"][format!("{name}:connections")][0];
    assert_eq!(conns["observedValue"], 1);
    assert_eq!(conns["used"], 1);
    assert_eq!(conns["max"], 4);
    assert!(conns["size"].as_u64().unwrap() >= 1);
    assert_eq!(
        conns["size"].as_u64().unwrap(),
        conns["idle"].as_u64().unwrap() + 1
    );
    drop(held);
}

#[tokio::test]
async fn postgres_healthy_pool() {
    healthy("postgres", pg(4).await).await;
}

#[tokio::test]
async fn mariadb_healthy_pool() {
    healthy("mariadb", mysql(4).await).await;
}

#[tokio::test]
async fn sqlite_healthy_pool() {
    let dir = tempfile::tempdir().unwrap();
    healthy("sqlite", sqlite(&dir, 4).await).await;
}

/// Every connection held by the application: 100% and `warn`, never a wait for a
/// connection, and the instance stays ready.
async fn exhausted<DB>(name: &str, pool: Pool<DB>)
where
    DB: garrison_health::CheckedDatabase,
{
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let health = registry();
    health
        .register(
            name,
            PoolCheck::new(pool.clone()),
            CheckOptions::readiness().timeout(Duration::from_secs(30)),
        )
        .unwrap();
    health.refresh().await;
    let obs = health.last(name).unwrap();
    assert_eq!(obs.status(), Status::Warn, "{obs:?}");
    let util = obs.result.get("utilization").unwrap();
    assert_eq!(util.get_status(), Status::Warn);
    assert_eq!(
        util.value(),
        Some(&garrison_health::Observed::Number(100.0))
    );
    let rt = obs.result.get("responseTime").unwrap();
    assert_eq!(rt.get_status(), Status::Warn);
    assert!(
        rt.get_output().unwrap().contains("pool exhausted"),
        "{rt:?}"
    );

    let addr = serve(health.router()).await;
    let (status, body) = get(addr, "/health/ready", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"status": "warn"}))
    );
    let (_, body) = get(addr, "/health", Some("t0ken")).await;
    assert_eq!(
        body["checks"][format!("{name}:utilization")][0]["status"],
        "warn"
    );
    assert_eq!(
        body["checks"][format!("{name}:utilization")][0]["output"],
        "2 of 2 connections in use"
    );
    assert!(
        body["output"]
            .as_str()
            .unwrap()
            .starts_with("pool exhausted"),
        "{body}"
    );
    drop((a, b));

    // the pool recovers: the next run passes (sqlx hands dropped connections back from a
    // task of its own, so wait for them)
    for _ in 0..500 {
        if pool.num_idle() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    health.refresh().await;
    assert_eq!(health.last(name).unwrap().status(), Status::Pass);
}

#[tokio::test]
async fn postgres_exhausted_pool_warns() {
    exhausted("postgres", pg(2).await).await;
}

#[tokio::test]
async fn mariadb_exhausted_pool_warns() {
    exhausted("mariadb", mysql(2).await).await;
}

#[tokio::test]
async fn sqlite_exhausted_pool_warns() {
    let dir = tempfile::tempdir().unwrap();
    exhausted("sqlite", sqlite(&dir, 2).await).await;
}

async fn assert_unanswered<DB: garrison_health::CheckedDatabase>(
    pools: Vec<(&'static str, Pool<DB>)>,
) {
    let timeout = Duration::from_millis(300);
    let health = registry();
    for (name, pool) in &pools {
        health
            .register(
                name,
                PoolCheck::new(pool.clone()),
                CheckOptions::readiness().timeout(timeout),
            )
            .unwrap();
    }
    health.refresh().await;
    let app: Router = health.router();
    for (name, _) in &pools {
        let obs = health.last(name).unwrap();
        assert_eq!(obs.status(), Status::Fail, "{name}: {obs:?}");
        assert!(obs.duration <= timeout, "{name}: took {:?}", obs.duration);
        let reason = obs.result.reason().unwrap();
        assert!(!reason.contains("hunter2"), "{name}: {reason}");
        assert!(!reason.contains("127.0.0.1"), "{name}: {reason}");
        if name.ends_with("silent") {
            assert_eq!(reason, "timed out after 300ms", "{name}");
            assert_eq!(
                obs.duration, timeout,
                "{name}: cut off exactly at its timeout"
            );
        } else {
            // the real cause, not the pool's retries until its acquire timeout
            assert!(reason.contains("refused"), "{name}: {reason}");
        }
    }
    let ready = app
        .clone()
        .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = app
        .oneshot(Request::get("/health/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(health.live().status(), Status::Pass);
    assert_eq!(health.report(Probe::Deep).status(), Status::Fail);
}

#[tokio::test(start_paused = true)]
async fn postgres_that_does_not_answer_fails_within_the_timeout() {
    let silent = silent_listener().await;
    let lazy = |url: String| {
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(&url)
            .unwrap()
    };
    assert_unanswered(vec![
        (
            "pg-silent",
            lazy(format!("postgres://postgres:hunter2@{silent}/postgres")),
        ),
        (
            "pg-closed",
            lazy(format!(
                "postgres://postgres:hunter2@127.0.0.1:{}/postgres",
                closed_port()
            )),
        ),
    ])
    .await;
}

#[tokio::test(start_paused = true)]
async fn mariadb_that_does_not_answer_fails_within_the_timeout() {
    let silent = silent_listener().await;
    let lazy = |url: String| {
        MySqlPoolOptions::new()
            .max_connections(2)
            .connect_lazy(&url)
            .unwrap()
    };
    assert_unanswered(vec![
        (
            "my-silent",
            lazy(format!("mysql://root:hunter2@{silent}/test")),
        ),
        (
            "my-closed",
            lazy(format!(
                "mysql://root:hunter2@127.0.0.1:{}/test",
                closed_port()
            )),
        ),
    ])
    .await;
}

/// Two thousand probes over real sockets between two refreshes: the database sees exactly
/// the one round trip of the refresh, counted on its side by a sequence the check advances.
#[tokio::test]
async fn a_probe_storm_costs_the_database_nothing() {
    let pool = pg(4).await;
    let seq = format!(
        "garrison_probe_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SEQUENCE {seq}")))
        .execute(&pool)
        .await
        .unwrap();
    let health = HealthRegistry::builder().details(Details::Always).build();
    health
        .register(
            "postgres",
            PoolCheck::new(pool.clone()).query(format!("SELECT nextval('{seq}')")),
            CheckOptions::readiness().interval(Duration::from_secs(3600)),
        )
        .unwrap();
    health.refresh().await;
    let addr = serve(health.router()).await;

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                for path in std::iter::repeat_n(["/health", "/health/ready"], 20).flatten() {
                    let (status, body) = get(addr, path, None).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (calls,): (i64,) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT last_value FROM {seq}")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(calls, 1, "2000 probes, one query: the refresh's");
    assert_eq!(health.runs("postgres"), Some(1));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SEQUENCE {seq}")))
        .execute(&pool)
        .await
        .unwrap();
}

/// `db_client_connection_*` read from a real pool, the wait measured at acquire.
#[tokio::test]
async fn pool_metrics_follow_the_pool() {
    let metrics = MetricsRegistry::new();
    let db = DbMetrics::new(&metrics);
    let orders = db.instrument(
        "orders",
        PgPoolOptions::new()
            .max_connections(2)
            // long enough for a loaded CI machine to open the first two connections;
            // the third acquire waits it out once
            .acquire_timeout(Duration::from_secs(2))
            .connect(&pg_url())
            .await
            .expect(
                "PostgreSQL answers (GARRISON_TEST_POSTGRES_URL); start it with `just services`",
            ),
    );
    let a = orders.acquire().await.unwrap();
    let b = orders.acquire().await.unwrap();
    assert!(matches!(
        orders.acquire().await,
        Err(sqlx::Error::PoolTimedOut)
    ));
    let text = metrics.render(Format::Prometheus);
    for needle in [
        "db_client_connection_usage{db_client_connection_pool_name=\"orders\",db_client_connection_state=\"used\"} 2\n",
        "db_client_connection_usage{db_client_connection_pool_name=\"orders\",db_client_connection_state=\"idle\"} 0\n",
        "db_client_connection_max{db_client_connection_pool_name=\"orders\"} 2\n",
        "db_client_connection_wait_time_seconds_count{db_client_connection_pool_name=\"orders\"} 3\n",
        "db_client_connection_timeouts_total{db_client_connection_pool_name=\"orders\"} 1\n",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    drop(a);
    // sqlx hands a dropped connection back to the pool from a task of its own
    for _ in 0..500 {
        if orders.stats().idle == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = metrics.render(Format::Prometheus);
    assert!(text.contains(
        "db_client_connection_usage{db_client_connection_pool_name=\"orders\",db_client_connection_state=\"idle\"} 1\n"
    ), "{text}");
    drop(b);
    assert_eq!(orders.stats().max, 2);
}

/// A round trip slower than `warn_response_time` warns (the statement takes at least 200 ms
/// on the server, so the warning does not depend on the machine's speed), and the same
/// statement under the default threshold passes.
async fn slow_round_trip_warns<DB>(name: &str, pool: Pool<DB>, sleep: &'static str)
where
    DB: garrison_health::CheckedDatabase,
{
    let health = registry();
    health
        .register(
            name,
            PoolCheck::new(pool.clone())
                .query(sleep)
                .warn_response_time(Duration::from_millis(100)),
            CheckOptions::readiness(),
        )
        .unwrap();
    health
        .register(
            "patient",
            PoolCheck::new(pool).query(sleep),
            CheckOptions::readiness(),
        )
        .unwrap();
    health.refresh().await;
    let addr = serve(health.router()).await;
    let (status, body) = get(addr, "/health", Some("t0ken")).await;
    assert_eq!(status, StatusCode::OK, "warn is still ready: {body}");
    assert_eq!(body["status"], "warn", "{body}");
    let rt = &body["checks"][format!("{name}:responseTime")][0];
    assert_eq!(rt["status"], "warn", "{rt}");
    assert!(rt["observedValue"].as_f64().unwrap() >= 200.0, "{rt}");
    assert!(
        rt["output"]
            .as_str()
            .unwrap()
            .contains("warned from 100 ms"),
        "{rt}"
    );
    let patient = &body["checks"]["patient:responseTime"][0];
    assert_eq!(patient["status"], "pass", "5 s by default: {patient}");
}

#[tokio::test]
async fn postgres_slow_round_trip_warns_before_it_fails() {
    slow_round_trip_warns("postgres", pg(4).await, "SELECT pg_sleep(0.2)").await;
}

#[tokio::test]
async fn mariadb_slow_round_trip_warns_before_it_fails() {
    slow_round_trip_warns("mariadb", mysql(4).await, "SELECT SLEEP(0.2)").await;
}
