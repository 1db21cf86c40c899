//! Goodput under overload, with and without the admission layer: an in-process service
//! whose latency grows with the work it holds (10 ms at up to 8 requests, longer beyond,
//! as a CPU or a database pool behaves), offered twice its capacity for a few seconds by
//! open-loop arrivals (20% critical, 80% batch) whose callers give up after 200 ms. The work
//! of a caller that gave up goes on (a server does not see it leave). Goodput: answers that
//! arrive within the 200 ms, per second.
//!
//! ```text
//! cargo bench -p garrison-workspace --bench admission_overload
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garrison_admission::{Admission, AdmissionLayer, Priority};
use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt};

const CAPACITY: usize = 8;
const WORK: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_secs(4);
/// Twice what the service can do: CAPACITY / WORK = 800 requests a second.
const OFFERED_PER_SEC: u64 = 1600;

#[derive(Default)]
struct Tally {
    good: [AtomicUsize; 2],
    late: [AtomicUsize; 2],
    shed: [AtomicUsize; 2],
}

fn service(
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let held = Arc::new(AtomicUsize::new(0));
    tower::service_fn(move |_req: Request<String>| {
        let held = held.clone();
        // the work goes on even if the caller gives up
        let work = tokio::spawn(async move {
            let n = held.fetch_add(1, Ordering::Relaxed) + 1;
            let slowdown = (n as f64 / CAPACITY as f64).max(1.0);
            tokio::time::sleep(WORK.mul_f64(slowdown)).await;
            held.fetch_sub(1, Ordering::Relaxed);
        });
        async move {
            let _ = work.await;
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }
    })
}

async fn run<S, B>(svc: S) -> Arc<Tally>
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let gap = Duration::from_nanos(1_000_000_000 / OFFERED_PER_SEC);
    let mut next = tokio::time::Instant::now();
    let mut i = 0u64;
    let mut callers = Vec::new();
    while start.elapsed() < RUN {
        let critical = i.is_multiple_of(5);
        let mut req = Request::new(String::new());
        req.extensions_mut().insert(if critical {
            Priority::Critical
        } else {
            Priority::Batch
        });
        let (svc, tally) = (svc.clone(), tally.clone());
        callers.push(tokio::spawn(async move {
            let class = usize::from(!critical);
            match tokio::time::timeout(DEADLINE, svc.oneshot(req)).await {
                Ok(Ok(resp)) if is_ok(&resp) => tally.good[class].fetch_add(1, Ordering::Relaxed),
                Ok(_) => tally.shed[class].fetch_add(1, Ordering::Relaxed),
                Err(_) => tally.late[class].fetch_add(1, Ordering::Relaxed),
            };
        }));
        i += 1;
        next += gap;
        tokio::time::sleep_until(next).await;
    }
    for c in callers {
        let _ = c.await;
    }
    tally
}

fn is_ok<B>(resp: &Response<B>) -> bool {
    resp.status().is_success()
}

fn report(name: &str, t: &Tally) {
    let secs = RUN.as_secs_f64();
    let g = |c: usize| t.good[c].load(Ordering::Relaxed) as f64 / secs;
    let n = |a: &[AtomicUsize; 2], c: usize| a[c].load(Ordering::Relaxed);
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {} / {} | {} / {} |",
        g(0) + g(1),
        g(0),
        g(1),
        n(&t.late, 0),
        n(&t.late, 1),
        n(&t.shed, 0),
        n(&t.shed, 1),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "offered {OFFERED_PER_SEC}/s for {}s to a service that does {}/s; callers give up after {} ms\n",
            RUN.as_secs(),
            CAPACITY as u128 * 1000 / WORK.as_millis(),
            DEADLINE.as_millis()
        );
        println!("| variant | goodput/s | critical/s | batch/s | late (critical / batch) | shed (critical / batch) |");
        println!("|---|---:|---:|---:|---:|---:|");
        let without = run(service()).await;
        report("no admission", &without);
        let admission = Admission::builder()
            .max_in_flight(CAPACITY)
            .max_queue(64)
            .queue_timeout(Priority::Batch, Duration::from_millis(100))
            .build()
            .expect("admission");
        let with = ServiceBuilder::new()
            .layer(AdmissionLayer::new(admission))
            .service(service());
        let with = run(with).await;
        report("AdmissionLayer (8 in flight, 64 queued)", &with);
    });
}
