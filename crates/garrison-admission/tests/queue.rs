//! The queue's rules on tokio's paused clock: priority order, per-class timeouts, shedding
//! when full, eviction of the lowest priority, the no-starvation rule, cancelled waiters,
//! the adaptive limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use garrison_admission::{Adaptive, Admission, Priority, ShedReason};
use tokio::time::{advance, Instant};

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn one_slot() -> Admission {
    Admission::builder()
        .max_in_flight(1)
        .max_queue(10)
        .aging(Duration::ZERO)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_best_class_then_the_earliest_arrival() {
    let adm = one_slot();
    let held = adm.acquire(Priority::Normal).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let arrivals = [
        (Priority::Batch, 1),
        (Priority::Low, 1),
        (Priority::Normal, 1),
        (Priority::High, 1),
        (Priority::Critical, 1),
        (Priority::High, 2),
        (Priority::Batch, 2),
    ];
    for (p, n) in arrivals {
        let (adm, order) = (adm.clone(), order.clone());
        tokio::spawn(async move {
            let permit = adm.acquire(p).await.unwrap();
            order.lock().unwrap().push((p, n));
            drop(permit);
        });
        settle().await;
    }
    assert_eq!(adm.queued(), 7);
    assert_eq!(adm.queued_by_priority(), [1, 2, 1, 1, 2]);
    drop(held);
    settle().await;
    assert_eq!(
        *order.lock().unwrap(),
        [
            (Priority::Critical, 1),
            (Priority::High, 1),
            (Priority::High, 2),
            (Priority::Normal, 1),
            (Priority::Low, 1),
            (Priority::Batch, 1),
            (Priority::Batch, 2),
        ]
    );
    assert_eq!(adm.in_flight(), 0);
    assert_eq!(adm.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_class_waits_at_most_its_own_timeout() {
    let adm = Admission::builder()
        .max_in_flight(1)
        .queue_timeout(Priority::Batch, Duration::from_millis(250))
        .queue_timeout(Priority::Normal, Duration::from_secs(1))
        .build()
        .unwrap();
    let _held = adm.acquire(Priority::Normal).await.unwrap();
    let t0 = Instant::now();
    let batch = tokio::spawn({
        let adm = adm.clone();
        async move { (adm.acquire(Priority::Batch).await.map(drop), Instant::now()) }
    });
    let normal = tokio::spawn({
        let adm = adm.clone();
        async move {
            (
                adm.acquire(Priority::Normal).await.map(drop),
                Instant::now(),
            )
        }
    });
    settle().await;
    assert_eq!(adm.queued(), 2);
    let (batch, at) = batch.await.unwrap();
    assert_eq!(batch.unwrap_err().reason, ShedReason::Timeout);
    assert_eq!(at - t0, Duration::from_millis(250));
    assert_eq!(adm.queued(), 1);
    let (normal, at) = normal.await.unwrap();
    let shed = normal.unwrap_err();
    assert_eq!(
        (shed.priority, shed.reason),
        (Priority::Normal, ShedReason::Timeout)
    );
    assert_eq!(at - t0, Duration::from_secs(1));
    let (_, shed) = adm.counts();
    assert_eq!(shed[Priority::Batch.index()], [0, 1, 0, 0]);
    assert_eq!(shed[Priority::Normal.index()], [0, 1, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_the_lowest_class_below_the_arrival_or_sheds_it() {
    let adm = Admission::builder()
        .max_in_flight(1)
        .max_queue(2)
        .build()
        .unwrap();
    let _held = adm.acquire(Priority::Normal).await.unwrap();
    let wait = |p| {
        let adm = adm.clone();
        tokio::spawn(async move { adm.acquire(p).await.map(drop) })
    };
    let batch = wait(Priority::Batch);
    let low = wait(Priority::Low);
    settle().await;
    assert_eq!(adm.queued(), 2);

    // a critical arrival takes the batch request's place
    let critical = wait(Priority::Critical);
    settle().await;
    let shed = batch.await.unwrap().unwrap_err();
    assert_eq!(
        (shed.priority, shed.reason),
        (Priority::Batch, ShedReason::Evicted)
    );
    // then a normal one takes the low one's
    let normal = wait(Priority::Normal);
    settle().await;
    assert_eq!(low.await.unwrap().unwrap_err().reason, ShedReason::Evicted);
    // an equal class is not evicted: the arrival is shed itself, at once
    let t0 = Instant::now();
    let shed = adm.acquire(Priority::Normal).await.unwrap_err();
    assert_eq!(
        (shed.priority, shed.reason),
        (Priority::Normal, ShedReason::QueueFull)
    );
    assert_eq!(Instant::now(), t0);
    // a critical arrival takes the normal one's place; then nothing is below high
    let critical2 = wait(Priority::Critical);
    settle().await;
    assert_eq!(
        normal.await.unwrap().unwrap_err().reason,
        ShedReason::Evicted
    );
    assert_eq!(
        adm.acquire(Priority::High).await.unwrap_err().reason,
        ShedReason::QueueFull
    );
    assert_eq!(adm.queued_by_priority(), [2, 0, 0, 0, 0]);
    drop(_held);
    assert!(critical.await.unwrap().is_ok());
    assert!(critical2.await.unwrap().is_ok());
    let (admitted, shed) = adm.counts();
    assert_eq!(admitted[Priority::Critical.index()], 2);
    assert_eq!(shed[Priority::Batch.index()], [0, 0, 1, 0]);
    assert_eq!(shed[Priority::Normal.index()], [1, 0, 1, 0]);
    assert_eq!(shed[Priority::High.index()], [1, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_queue_of_zero_sheds_whatever_finds_every_slot_taken() {
    let adm = Admission::builder()
        .max_in_flight(2)
        .max_queue(0)
        .build()
        .unwrap();
    let a = adm.acquire(Priority::Batch).await.unwrap();
    let _b = adm.acquire(Priority::Batch).await.unwrap();
    let shed = adm.acquire(Priority::Critical).await.unwrap_err();
    assert_eq!(shed.reason, ShedReason::QueueFull);
    drop(a);
    assert!(adm.acquire(Priority::Critical).await.is_ok());
}

/// Under a steady stream of critical requests that always keeps one waiting, a batch
/// request is served once it has aged to critical and is the oldest: after 4 × `aging`.
/// With strict priority (aging zero) it starves until its timeout.
#[tokio::test(start_paused = true)]
async fn aging_keeps_a_steady_stream_of_critical_requests_from_starving_batch() {
    async fn served_after(aging: Duration) -> Result<Duration, ShedReason> {
        let adm = Admission::builder()
            .max_in_flight(1)
            .max_queue(1000)
            .aging(aging)
            .queue_timeout(Priority::Batch, Duration::from_secs(10))
            .queue_timeout(Priority::Critical, Duration::from_secs(60))
            .build()
            .unwrap();
        let _first = adm.acquire(Priority::Critical).await.unwrap();
        // each critical request holds the slot 100 ms; a new one arrives every 50 ms
        let stream = tokio::spawn({
            let adm = adm.clone();
            async move {
                loop {
                    let adm = adm.clone();
                    tokio::spawn(async move {
                        let p = adm.acquire(Priority::Critical).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(p);
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(120)).await;
        let t0 = Instant::now();
        drop(_first);
        let result = adm.acquire(Priority::Batch).await;
        stream.abort();
        result.map(|_| Instant::now() - t0).map_err(|s| s.reason)
    }
    let waited = served_after(Duration::from_secs(1)).await.unwrap();
    assert!(
        waited >= Duration::from_secs(4) && waited <= Duration::from_millis(4200),
        "served after {waited:?}"
    );
    assert_eq!(
        served_after(Duration::ZERO).await.unwrap_err(),
        ShedReason::Timeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_leaves_the_queue_and_its_slot_goes_on() {
    let adm = one_slot();
    let held = adm.acquire(Priority::Normal).await.unwrap();
    let gone = tokio::spawn({
        let adm = adm.clone();
        async move { adm.acquire(Priority::Critical).await.map(drop) }
    });
    let next = tokio::spawn({
        let adm = adm.clone();
        async move { adm.acquire(Priority::Batch).await.map(drop) }
    });
    settle().await;
    assert_eq!(adm.queued(), 2);
    gone.abort();
    settle().await;
    assert_eq!(adm.queued(), 1, "the cancelled waiter left the queue");
    drop(held);
    assert!(next.await.unwrap().is_ok());
    assert_eq!(adm.in_flight(), 0);

    // a grant handed to a caller that is gone before it runs comes back
    let held = adm.acquire(Priority::Normal).await.unwrap();
    let mut waiting = Box::pin(adm.acquire(Priority::High));
    assert!(futures_poll(&mut waiting).is_none());
    drop(held); // the slot is handed to `waiting`
    assert_eq!(adm.in_flight(), 1);
    drop(waiting);
    assert_eq!(adm.in_flight(), 0);
}

fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_backs_off_on_slow_responses_and_grows_on_fast_ones() {
    let adm = Admission::builder()
        .max_in_flight(10)
        .adaptive(Adaptive {
            min: 2,
            max: 12,
            latency_target: Duration::from_millis(100),
            backoff: 0.5,
        })
        .build()
        .unwrap();
    assert_eq!(adm.limit(), 10);
    let slow = adm.acquire(Priority::Normal).await.unwrap();
    advance(Duration::from_millis(150)).await;
    drop(slow);
    assert_eq!(adm.limit(), 5);
    // a second slow response within the same 100 ms does not halve it again
    let slow = adm.acquire(Priority::Normal).await.unwrap();
    let slow2 = adm.acquire(Priority::Normal).await.unwrap();
    advance(Duration::from_millis(150)).await;
    drop(slow);
    assert_eq!(adm.limit(), 2);
    drop(slow2);
    assert_eq!(adm.limit(), 2, "never below min, once per target");
    // `limit` fast responses in a row add one
    for _ in 0..2 {
        drop(adm.acquire(Priority::Normal).await.unwrap());
    }
    assert_eq!(adm.limit(), 3);
    for _ in 0..100 {
        drop(adm.acquire(Priority::Normal).await.unwrap());
    }
    assert_eq!(adm.limit(), 12, "never above max");
}

#[test]
fn bad_settings_are_refused() {
    assert!(Admission::builder().max_in_flight(0).build().is_err());
    let err = Admission::builder()
        .adaptive(Adaptive {
            backoff: 1.5,
            ..Adaptive::default()
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("backoff"), "{err}");
    assert!(Admission::builder()
        .queue_timeout(Priority::Low, Duration::ZERO)
        .build()
        .is_err());
    assert_eq!("BATCH".parse::<Priority>().unwrap(), Priority::Batch);
    assert!("urgent".parse::<Priority>().is_err());
}

#[tokio::test(start_paused = true)]
async fn draining_sheds_every_waiter_at_once_and_the_queue_fills_again_after() {
    let adm = one_slot();
    let held = adm.acquire(Priority::Normal).await.unwrap();
    let results = Arc::new(Mutex::new(Vec::new()));
    for p in [Priority::Critical, Priority::Normal, Priority::Batch] {
        let (adm, results) = (adm.clone(), results.clone());
        tokio::spawn(async move {
            let r = adm
                .acquire(p)
                .await
                .map(drop)
                .map_err(|s| (s.priority, s.reason));
            results.lock().unwrap().push(r);
        });
        settle().await;
    }
    assert_eq!(adm.queued(), 3);
    assert_eq!(adm.drain(), 3);
    settle().await;
    assert_eq!(adm.queued(), 0);
    assert_eq!(
        *results.lock().unwrap(),
        [
            Err((Priority::Critical, ShedReason::Drained)),
            Err((Priority::Normal, ShedReason::Drained)),
            Err((Priority::Batch, ShedReason::Drained)),
        ]
    );
    let (_, shed) = adm.counts();
    assert_eq!(
        shed[Priority::Normal.index()][ShedReason::Drained as usize],
        1
    );
    // the slot held is untouched, and the queue takes new requests again
    let next = tokio::spawn({
        let adm = adm.clone();
        async move { adm.acquire(Priority::Low).await.is_ok() }
    });
    settle().await;
    assert_eq!(adm.queued(), 1);
    drop(held);
    assert!(next.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn sheds_are_logged_once_a_second_with_the_count_since_and_only_when_asked() {
    let logs = garrison_core::testing::LogCapture::start("garrison_admission");
    let full = |log: bool| {
        Admission::builder()
            .max_in_flight(1)
            .max_queue(0)
            .log_sheds(log)
            .build()
            .unwrap()
    };
    let (quiet, logged) = (full(false), full(true));
    let _held = (
        quiet.acquire(Priority::Normal).await.unwrap(),
        logged.acquire(Priority::Normal).await.unwrap(),
    );
    for adm in [&quiet, &logged] {
        for _ in 0..5 {
            assert!(adm.acquire(Priority::Low).await.is_err());
        }
    }
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        lines[0],
        "WARN message=admission shed a request class=low reason=queue_full shed_since_last_event=0"
    );
    advance(Duration::from_secs(1)).await;
    assert!(logged.acquire(Priority::Batch).await.is_err());
    let lines = logs.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].ends_with("class=batch reason=queue_full shed_since_last_event=4"));
}
