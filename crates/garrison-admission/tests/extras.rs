//! The health check over a real queue, and admission in front of a real SQLite pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use garrison_admission::{
    acquire_connection, Admission, AdmissionCheck, PoolAcquireError, Priority, ShedReason,
};
use garrison_health::{Check, Status};

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_check_warns_only_when_the_queue_stayed_deep_between_two_runs() {
    let adm = Admission::builder()
        .max_in_flight(1)
        .max_queue(8)
        .deep_queue(2)
        .queue_timeout(Priority::Normal, Duration::from_secs(3600))
        .build()
        .unwrap();
    let check = AdmissionCheck::new(&adm);
    let status = |r: garrison_health::CheckResult| r.get("queue").unwrap().get_status();
    assert_eq!(status(check.check().await), Status::Pass);

    let held = adm.acquire(Priority::Normal).await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let adm = adm.clone();
            tokio::spawn(async move { adm.acquire(Priority::Normal).await.map(drop) })
        })
        .collect();
    settle().await;
    // deep now, but it was empty at the last run: a burst, not a shortage
    assert_eq!(status(check.check().await), Status::Pass);
    // deep all the way since
    let r = check.check().await;
    assert_eq!(status(r.clone()), Status::Warn, "{r:?}");
    // it drains: the low-water mark since the last run is 0
    drop(held);
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(status(check.check().await), Status::Pass);
}

#[tokio::test]
async fn pool_acquires_wait_in_priority_order_and_report_sheds() {
    let dir = std::env::temp_dir().join(format!("garrison-admission-{}.db", std::process::id()));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=rwc", dir.display()))
        .await
        .expect("SQLite opens a file database");
    let adm = Admission::builder()
        .max_in_flight(1)
        .max_queue(2)
        .build()
        .unwrap();
    let mut first = acquire_connection(&adm, &pool, Priority::Normal)
        .await
        .unwrap();
    let (one,): (i64,) = sqlx::query_as("SELECT 1")
        .fetch_one(&mut **first)
        .await
        .unwrap();
    assert_eq!(one, 1);

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for p in [Priority::Batch, Priority::Critical] {
        let (adm, pool, order) = (adm.clone(), pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = acquire_connection(&adm, &pool, p).await?;
            sqlx::query("SELECT 1").execute(&mut **conn).await.unwrap();
            order.lock().unwrap().push(p);
            Ok::<_, PoolAcquireError>(())
        }));
        settle().await;
    }
    // the queue is full of batch and critical: another batch request is shed, not queued in
    // sqlx
    match acquire_connection(&adm, &pool, Priority::Batch).await {
        Err(PoolAcquireError::Shed(s)) => assert_eq!(s.reason, ShedReason::QueueFull),
        other => panic!("{other:?}"),
    }
    drop(first);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        [Priority::Critical, Priority::Batch]
    );
    pool.close().await;
    let _ = std::fs::remove_file(dir);
}

/// The same admission in front of a sqlx 0.8 pool: at most `limit` connections out, the
/// rest wait their turn.
#[cfg(feature = "sqlx-0_8")]
#[tokio::test]
async fn sqlx_0_8_pools_take_the_same_admission() {
    use garrison_admission::sqlx_0_8::acquire_connection as acquire_08;
    let pool = sqlx_0_8::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let adm = Admission::builder().max_in_flight(1).build().unwrap();
    let mut first = acquire_08(&adm, &pool, Priority::Normal).await.unwrap();
    let (one,): (i64,) = sqlx_0_8::query_as("SELECT 1")
        .fetch_one(&mut **first)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let waiting = tokio::spawn({
        let (adm, pool) = (adm.clone(), pool.clone());
        async move { acquire_08(&adm, &pool, Priority::Normal).await.map(drop) }
    });
    settle().await;
    assert!(!waiting.is_finished(), "the second waits for the admission");
    assert_eq!(pool.size() - pool.num_idle() as u32, 1);
    drop(first);
    waiting.await.unwrap().unwrap();
}
