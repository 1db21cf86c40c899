//! Health routes for a service with a PostgreSQL pool and Redis.
//!
//! ```text
//! GARRISON_HEALTH_TOKEN=s3cret cargo run --example health_axum
//! curl -i localhost:3000/health/live                               # {"status":"pass"}
//! curl -i localhost:3000/health/ready                              # 200, or 503 with the database down
//! curl -s -H 'authorization: Bearer s3cret' localhost:3000/health  # every check, with figures
//! curl localhost:3000/orders/count                                 # uses the pool
//! curl -s localhost:3000/metrics | grep -E 'db_client|garrison_health'
//! ```
//!
//! The database is `GARRISON_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! Redis `GARRISON_REDIS_URL` (default `redis://127.0.0.1:6379`). The service starts even when
//! they are down: readiness says so, liveness does not. Details of `/health` need the token in
//! `GARRISON_HEALTH_TOKEN`. Ctrl-C fails readiness first, then stops after a short drain. It
//! listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use garrison_health::{CheckOptions, DbMetrics, HealthRegistry, InstrumentedPool, RedisCheck};
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use sqlx::Postgres;

/// The health registry of the example: the pool (critical) and Redis (not critical: the
/// service degrades without its cache).
pub(crate) fn health(
    pool: &InstrumentedPool<Postgres>,
    redis_url: &str,
    token: Option<String>,
    metrics: &MetricsRegistry,
) -> Result<HealthRegistry, Box<dyn std::error::Error>> {
    let mut b = HealthRegistry::builder()
        .service_id("health-example")
        .version(env!("CARGO_PKG_VERSION"));
    if let Some(t) = token {
        b = b.token(t);
    }
    let health = b.build();
    let every = |s| Duration::from_secs(s);
    health.register(
        "postgres",
        pool.check(),
        CheckOptions::readiness()
            .timeout(every(2))
            .interval(every(5)),
    )?;
    health.register(
        "redis",
        RedisCheck::new(redis_url)?,
        CheckOptions::readiness()
            .non_critical()
            .timeout(every(1))
            .interval(every(5)),
    )?;
    health.metrics(metrics);
    Ok(health)
}

/// The routes: the application's, the three health routes, `/metrics`.
pub(crate) fn app(
    pool: InstrumentedPool<Postgres>,
    health: &HealthRegistry,
    metrics: &MetricsRegistry,
) -> Router {
    Router::new()
        .route("/orders/count", get(count))
        .with_state(pool)
        .merge(health.router())
        .route_service("/metrics", metrics.exporter())
        .layer(MetricsLayer::new(metrics))
}

async fn count(State(pool): State<InstrumentedPool<Postgres>>) -> Result<String, StatusCode> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_activity")
        .fetch_one(&mut *conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(format!("{n} sessions\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("health_axum listening on http://{}", listener.local_addr()?);
    let db_url = std::env::var("GARRISON_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis_url =
        std::env::var("GARRISON_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let token = std::env::var("GARRISON_HEALTH_TOKEN").ok();
    if token.is_none() {
        println!("set GARRISON_HEALTH_TOKEN to see the details of /health");
    }
    let metrics = MetricsRegistry::new();
    let pool = DbMetrics::new(&metrics).instrument(
        "main",
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_lazy(&db_url)?,
    );
    let health = health(&pool, &redis_url, token, &metrics)?;
    let router = app(pool, &health, &metrics);
    let draining = health.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            draining.begin_shutdown();
            // load balancers see the failing readiness before the listener closes
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await?;
    Ok(())
}
