//! The admission controller: slots, the priority queue, permits and the adaptive limit.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use garrison_metrics::{DurationHistogram, MetricType, MetricWriter, MetricsRegistry};
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::Priority;

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// The queue was full and held nothing of lower priority to make room.
    QueueFull,
    /// The request waited longer than its class's queue timeout.
    Timeout,
    /// A request of higher priority took its place in a full queue.
    Evicted,
    /// An operator drained the queue ([`Admission::drain`]).
    Drained,
}

impl ShedReason {
    /// Every reason, in the order of the metrics.
    pub const ALL: [ShedReason; 4] = [Self::QueueFull, Self::Timeout, Self::Evicted, Self::Drained];

    /// The reason's label: `queue_full`, `timeout`, `evicted`, `drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Timeout => "timeout",
            Self::Evicted => "evicted",
            Self::Drained => "drained",
        }
    }
}

impl fmt::Display for ShedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that was not admitted: its priority and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shed {
    /// The priority it had.
    pub priority: Priority,
    /// Why it was shed.
    pub reason: ShedReason,
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shed ({}, priority {})", self.reason, self.priority)
    }
}

impl std::error::Error for Shed {}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "admission: {}", self.0)
    }
}

impl std::error::Error for BuildError {}

/// The adaptive limit (AIMD, as in Netflix's concurrency-limits): each response slower than
/// `latency_target` multiplies the limit by `backoff` (at most once per `latency_target`);
/// each `limit` responses in time add one. The limit stays within `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptive {
    /// The lowest limit. Default: 1.
    pub min: usize,
    /// The highest limit. Default: 1000.
    pub max: usize,
    /// Responses slower than this lower the limit. Default: 250 ms.
    pub latency_target: Duration,
    /// The factor a slow response applies, between 0 and 1. Default: 0.9.
    pub backoff: f64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            min: 1,
            max: 1000,
            latency_target: Duration::from_millis(250),
            backoff: 0.9,
        }
    }
}

/// The default queue timeouts, by class: critical 5 s, high 2 s, normal 1 s, low 500 ms,
/// batch 250 ms.
pub const DEFAULT_QUEUE_TIMEOUTS: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(2),
    Duration::from_secs(1),
    Duration::from_millis(500),
    Duration::from_millis(250),
];

/// Buckets of `garrison_admission_wait_seconds`.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Builds an [`Admission`].
#[derive(Clone, Debug)]
#[must_use]
pub struct AdmissionBuilder {
    max_in_flight: usize,
    max_queue: usize,
    timeouts: [Duration; 5],
    aging: Duration,
    adaptive: Option<Adaptive>,
    deep_queue: Option<usize>,
    metrics: Option<MetricsRegistry>,
    log_sheds: bool,
}

impl Default for AdmissionBuilder {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_queue: 256,
            timeouts: DEFAULT_QUEUE_TIMEOUTS,
            aging: Duration::from_secs(1),
            adaptive: None,
            deep_queue: None,
            metrics: None,
            log_sheds: false,
        }
    }
}

impl AdmissionBuilder {
    /// Requests in the inner service at most (the starting limit when adaptive). Default: 64.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Requests waiting at most; 0 sheds whatever finds every slot taken. Default: 256.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// How long a request of `priority` may wait before it is shed.
    pub fn queue_timeout(mut self, priority: Priority, timeout: Duration) -> Self {
        self.timeouts[priority.index()] = timeout;
        self
    }

    /// The no-starvation rule: a waiting request moves up one class for every `aging` it has
    /// waited, so that a steady stream of higher priorities cannot hold it back for ever
    /// (a batch request competes as critical after 4 × `aging`). Zero: strict priority.
    /// Default: 1 s.
    pub fn aging(mut self, aging: Duration) -> Self {
        self.aging = aging;
        self
    }

    /// Lets the limit adjust itself from observed latency (see [`Adaptive`]).
    pub fn adaptive(mut self, adaptive: Adaptive) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// The depth at which the queue counts as deep for [`Admission::stayed_deep`] (the health
    /// check). Default: half of `max_queue` (at least 1).
    pub fn deep_queue(mut self, depth: usize) -> Self {
        self.deep_queue = Some(depth);
        self
    }

    /// Exports `garrison_admission_*` through `registry`.
    pub fn metrics(mut self, registry: &MetricsRegistry) -> Self {
        self.metrics = Some(registry.clone());
        self
    }

    /// Logs sheds: a `WARN` event `admission shed a request` with the class and the reason,
    /// at most one a second, counting the sheds since the previous one (default: off; the
    /// `garrison_admission_shed_total` counter counts every shed either way).
    pub fn log_sheds(mut self, on: bool) -> Self {
        self.log_sheds = on;
        self
    }

    /// Builds the controller.
    pub fn build(self) -> Result<Admission, BuildError> {
        if self.max_in_flight == 0 {
            return Err(BuildError("max_in_flight must be > 0".into()));
        }
        if let Some(a) = &self.adaptive {
            if a.min == 0 || a.min > a.max {
                return Err(BuildError(
                    "adaptive: min must be > 0 and at most max".into(),
                ));
            }
            if !(a.backoff > 0.0 && a.backoff < 1.0) {
                return Err(BuildError(
                    "adaptive: backoff must be between 0 and 1, both excluded".into(),
                ));
            }
            if a.latency_target.is_zero() {
                return Err(BuildError("adaptive: latency_target must be > 0".into()));
            }
        }
        if let Some(p) = Priority::ALL
            .iter()
            .find(|p| self.timeouts[p.index()].is_zero())
        {
            return Err(BuildError(format!("the queue timeout of {p} must be > 0")));
        }
        let limit = match &self.adaptive {
            Some(a) => self.max_in_flight.clamp(a.min, a.max),
            None => self.max_in_flight,
        };
        let wait = || DurationHistogram::new(WAIT_BUCKETS).expect("valid buckets");
        let inner = Arc::new(Inner {
            in_flight: garrison_core::CachePadded(AtomicUsize::new(0)),
            limit: AtomicUsize::new(limit),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            max_queue: self.max_queue,
            timeouts: self.timeouts,
            aging: self.aging,
            adaptive: self.adaptive,
            deep: self.deep_queue.unwrap_or(self.max_queue / 2).max(1),
            low_water: AtomicUsize::new(0),
            epoch: Instant::now(),
            in_time: AtomicUsize::new(0),
            last_decrease: AtomicU64::new(0),
            admitted: AdmittedCounts::default(),
            shed: Default::default(),
            shed_log: self
                .log_sheds
                .then(|| garrison_core::LogEvery::new(Duration::from_secs(1))),
            wait: [wait(), wait(), wait(), wait(), wait()],
        });
        if let Some(m) = &self.metrics {
            m.register_collector(Arc::new(Collector(inner.clone())));
        }
        Ok(Admission { inner })
    }
}

/// The admission controller: at most `limit` permits out at once, further callers waiting
/// in a bounded queue ordered by priority, then arrival. Cheap to clone (one `Arc`); every
/// clone shares the slots.
///
/// ```
/// use garrison_admission::{Admission, Priority};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let admission = Admission::builder().max_in_flight(2).max_queue(10).build().unwrap();
/// let a = admission.acquire(Priority::High).await.unwrap();
/// let b = admission.acquire(Priority::Batch).await.unwrap();
/// assert_eq!(admission.in_flight(), 2);
/// drop((a, b));
/// assert_eq!(admission.in_flight(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Admission {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .field("queued", &self.queued())
            .finish()
    }
}

pub(crate) struct Inner {
    /// Written by every admission and release: alone on its cache line, so that the
    /// read-mostly fields below are not invalidated with it.
    in_flight: garrison_core::CachePadded<AtomicUsize>,
    limit: AtomicUsize,
    /// The queue's length, readable without its lock (the fast path's test).
    queued: AtomicUsize,
    queue: Mutex<Queue>,
    max_queue: usize,
    timeouts: [Duration; 5],
    aging: Duration,
    adaptive: Option<Adaptive>,
    deep: usize,
    /// The lowest queue depth since the health check last looked.
    low_water: AtomicUsize,
    epoch: Instant,
    in_time: AtomicUsize,
    last_decrease: AtomicU64,
    admitted: AdmittedCounts,
    shed: [[AtomicU64; 4]; 5],
    shed_log: Option<garrison_core::LogEvery>,
    wait: [DurationHistogram; 5],
}

/// Admissions by class, counted in one of a few shards per thread so that threads
/// admitting at once do not write one cache line.
type AdmittedCounts = garrison_core::ShardedCounters<5>;

#[derive(Default)]
struct Queue {
    classes: [VecDeque<Waiter>; 5],
    len: usize,
    seq: u64,
}

struct Waiter {
    seq: u64,
    since: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug)]
enum Grant {
    Admitted,
    Evicted,
    Drained,
}

impl Admission {
    /// A builder with the defaults: 64 in flight, 256 waiting, the
    /// [default timeouts](DEFAULT_QUEUE_TIMEOUTS), aging every second, a fixed limit.
    pub fn builder() -> AdmissionBuilder {
        AdmissionBuilder::default()
    }

    /// Permits out now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The limit now (it moves when adaptive).
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Requests waiting now, by class (critical first).
    pub fn queued_by_priority(&self) -> [usize; 5] {
        let q = self.inner.queue.lock();
        std::array::from_fn(|i| q.classes[i].len())
    }

    /// Whether the queue has stayed at least as deep as the `deep_queue` mark since the last
    /// call (the health check asks this on each run), and the lowest depth seen.
    pub fn stayed_deep(&self) -> (bool, usize) {
        let now = self.queued();
        let low = self.inner.low_water.swap(now, Ordering::Relaxed).min(now);
        (low >= self.inner.deep, low)
    }

    /// The `deep_queue` mark.
    pub fn deep_queue(&self) -> usize {
        self.inner.deep
    }

    /// Requests admitted so far by class, and shed by class and [`ShedReason::ALL`].
    pub fn counts(&self) -> ([u64; 5], [[u64; 4]; 5]) {
        let i = &self.inner;
        (
            std::array::from_fn(|p| i.admitted.get(p)),
            std::array::from_fn(|p| std::array::from_fn(|r| i.shed[p][r].load(Ordering::Relaxed))),
        )
    }

    /// A permit now if a slot is free and nobody waits, without queueing.
    #[inline]
    pub fn try_acquire(&self, priority: Priority) -> Option<Permit> {
        let i = &self.inner;
        if i.queued.load(Ordering::SeqCst) == 0 && i.take_slot() {
            i.admitted.add(priority.index());
            return Some(Permit::new(self.inner.clone()));
        }
        None
    }

    /// A permit, waiting in the queue if every slot is taken; `Err` when the request is shed
    /// (queue full, its class's timeout, or evicted for a higher priority).
    pub fn acquire(&self, priority: Priority) -> Acquire {
        match self.try_acquire(priority) {
            Some(p) => Acquire::ready(Ok(p)),
            None => self.enqueue(priority),
        }
    }

    /// Sheds every request waiting in the queue now (each answered `503` by the layer, as
    /// [`ShedReason::Drained`]); returns how many. An emergency action for an operator:
    /// requests admitted already go on, and new ones queue again.
    pub fn drain(&self) -> usize {
        let i = &self.inner;
        let mut q = i.queue.lock();
        let mut drained = 0;
        for class in 0..5 {
            while let Some(w) = q.classes[class].pop_front() {
                i.count_shed(class, ShedReason::Drained);
                let _ = w.tx.send(Grant::Drained);
                drained += 1;
            }
        }
        q.len = 0;
        i.queued.store(0, Ordering::SeqCst);
        drained
    }

    /// The slow path: joins the queue (or is shed at once).
    pub(crate) fn enqueue(&self, priority: Priority) -> Acquire {
        let i = &self.inner;
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        let mut q = i.queue.lock();
        let seq = q.seq;
        q.seq += 1;
        if q.len >= i.max_queue {
            // make room by shedding the newest waiter of the lowest class below this one
            let victim = (priority.index() + 1..5)
                .rev()
                .find(|&c| !q.classes[c].is_empty());
            match victim {
                Some(c) if i.max_queue > 0 => {
                    let w = q.classes[c].pop_back().expect("not empty");
                    q.len -= 1;
                    i.count_shed(c, ShedReason::Evicted);
                    let _ = w.tx.send(Grant::Evicted);
                }
                _ => {
                    // before shedding, a slot freed since the fast path failed is still
                    // everyone's
                    if q.len == 0 && i.take_slot() {
                        drop(q);
                        i.admitted.add(priority.index());
                        return Acquire::ready(Ok(Permit::new(self.inner.clone())));
                    }
                    drop(q);
                    i.count_shed(priority.index(), ShedReason::QueueFull);
                    return Acquire::ready(Err(Shed {
                        priority,
                        reason: ShedReason::QueueFull,
                    }));
                }
            }
        }
        q.classes[priority.index()].push_back(Waiter {
            seq,
            since: now,
            tx,
        });
        q.len += 1;
        i.queued.store(q.len, Ordering::SeqCst);
        i.dispatch(&mut q, now);
        drop(q);
        Acquire {
            state: AcquireState::Waiting {
                admission: self.inner.clone(),
                rx,
                seq,
                priority,
                sleep: tokio::time::sleep_until(now + i.timeouts[priority.index()]),
            },
        }
    }
}

impl Inner {
    /// Takes a slot if one is free.
    #[inline]
    fn take_slot(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn count_shed(&self, class: usize, reason: ShedReason) {
        // the variants are declared in the order of ShedReason::ALL
        self.shed[class][reason as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.shed_log {
            let now = Instant::now().saturating_duration_since(self.epoch);
            if let Some(also) = log.admit(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)) {
                tracing::warn!(
                    class = Priority::ALL[class].as_str(),
                    reason = reason.as_str(),
                    shed_since_last_event = also,
                    "admission shed a request"
                );
            }
        }
    }

    /// Hands free slots to the best waiters (the lock is held).
    fn dispatch(&self, q: &mut Queue, now: Instant) {
        while q.len > 0 {
            if !self.take_slot() {
                break;
            }
            let class = self.best(q, now);
            let w = q.classes[class].pop_front().expect("best is not empty");
            q.len -= 1;
            self.queued.store(q.len, Ordering::SeqCst);
            self.low_water.fetch_min(q.len, Ordering::Relaxed);
            if w.tx.send(Grant::Admitted).is_ok() {
                self.admitted.add(class);
                self.wait[class].observe(now.saturating_duration_since(w.since));
            } else {
                // its caller is gone: the slot goes to the next one
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// The class whose oldest waiter goes first: the best class after aging, then the
    /// earliest arrival.
    fn best(&self, q: &Queue, now: Instant) -> usize {
        let mut best: Option<(i64, u64, usize)> = None;
        for (c, class) in q.classes.iter().enumerate() {
            let Some(front) = class.front() else {
                continue;
            };
            let promoted = if self.aging.is_zero() {
                0
            } else {
                (now.saturating_duration_since(front.since).as_nanos()
                    / self.aging.as_nanos().max(1)) as i64
            };
            let key = (c as i64 - promoted.min(c as i64), front.seq, c);
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.expect("the queue is not empty").2
    }

    /// A permit is given back.
    #[inline]
    fn release(&self, started: Option<Instant>) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let (Some(a), Some(t0)) = (&self.adaptive, started) {
            self.adapt(a, t0);
        }
        if self.queued.load(Ordering::SeqCst) > 0 {
            let mut q = self.queue.lock();
            self.dispatch(&mut q, Instant::now());
        }
    }

    fn adapt(&self, a: &Adaptive, started: Instant) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        let limit = self.limit.load(Ordering::Relaxed);
        if took > a.latency_target {
            let at = now.saturating_duration_since(self.epoch).as_nanos() as u64;
            let last = self.last_decrease.load(Ordering::Relaxed);
            let due = last == 0 || at.saturating_sub(last) >= a.latency_target.as_nanos() as u64;
            if due
                && self
                    .last_decrease
                    .compare_exchange(last, at.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let lower = ((limit as f64 * a.backoff) as usize).clamp(a.min, a.max);
                self.limit.store(lower, Ordering::Relaxed);
                self.in_time.store(0, Ordering::Relaxed);
            }
        } else if self.in_time.fetch_add(1, Ordering::Relaxed) + 1 >= limit && limit < a.max {
            self.in_time.store(0, Ordering::Relaxed);
            let _ =
                self.limit
                    .compare_exchange(limit, limit + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Takes a waiter out of the queue (it timed out or was dropped); false when it is no
    /// longer there (it was admitted or evicted meanwhile).
    fn remove(&self, priority: Priority, seq: u64) -> bool {
        let mut q = self.queue.lock();
        let class = &mut q.classes[priority.index()];
        match class.iter().position(|w| w.seq == seq) {
            Some(at) => {
                class.remove(at);
                q.len -= 1;
                self.queued.store(q.len, Ordering::SeqCst);
                self.low_water.fetch_min(q.len, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// A slot in the inner service; given back when dropped.
pub struct Permit {
    inner: Arc<Inner>,
    started: Option<Instant>,
}

impl Permit {
    #[inline]
    fn new(inner: Arc<Inner>) -> Self {
        let started = inner.adaptive.map(|_| Instant::now());
        Self { inner, started }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.inner.release(self.started);
    }
}

pin_project! {
    /// The future of [`Admission::acquire`]. Dropped while waiting, it leaves the queue (and
    /// gives back a slot it was handed meanwhile).
    pub struct Acquire {
        #[pin]
        state: AcquireState,
    }

    impl PinnedDrop for Acquire {
        fn drop(this: Pin<&mut Self>) {
            if let StateProj::Waiting { admission, rx, seq, priority, .. } = this.project().state.project() {
                if !admission.remove(*priority, *seq) {
                    // admitted meanwhile: the permit goes back
                    if let Ok(Grant::Admitted) = rx.try_recv() {
                        drop(Permit { inner: admission.clone(), started: None });
                    }
                }
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum AcquireState {
        Ready { result: Option<Result<Permit, Shed>> },
        Waiting {
            admission: Arc<Inner>,
            rx: oneshot::Receiver<Grant>,
            seq: u64,
            priority: Priority,
            #[pin]
            sleep: Sleep,
        },
        Done,
    }
}

impl Acquire {
    fn ready(result: Result<Permit, Shed>) -> Self {
        Self {
            state: AcquireState::Ready {
                result: Some(result),
            },
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire").finish_non_exhaustive()
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Shed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let out = match this.state.as_mut().project() {
            StateProj::Ready { result } => result.take().expect("Acquire polled after completion"),
            StateProj::Waiting {
                admission,
                rx,
                seq,
                priority,
                sleep,
            } => {
                let shed = |reason| Shed {
                    priority: *priority,
                    reason,
                };
                let grant = match Pin::new(&mut *rx).poll(cx) {
                    Poll::Ready(g) => Ok(g.ok()),
                    Poll::Pending => match sleep.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) if admission.remove(*priority, *seq) => {
                            admission.count_shed(priority.index(), ShedReason::Timeout);
                            Err(shed(ShedReason::Timeout))
                        }
                        // handed a slot (or evicted) just as the clock ran out
                        Poll::Ready(()) => Ok(rx.try_recv().ok()),
                    },
                };
                match grant {
                    Err(e) => Err(e),
                    Ok(Some(Grant::Admitted)) => Ok(Permit::new(admission.clone())),
                    Ok(Some(Grant::Evicted)) => Err(shed(ShedReason::Evicted)),
                    Ok(Some(Grant::Drained)) => Err(shed(ShedReason::Drained)),
                    // the controller went away with the request still queued
                    Ok(None) => Err(shed(ShedReason::QueueFull)),
                }
            }
            StateProj::Done => panic!("Acquire polled after completion"),
        };
        this.state.set(AcquireState::Done);
        Poll::Ready(out)
    }
}

/// `garrison_admission_*`.
struct Collector(Arc<Inner>);

impl garrison_metrics::Collector for Collector {
    fn collect(&self, w: &mut MetricWriter<'_>) {
        let i = &self.0;
        w.family(
            "garrison_admission_in_flight",
            MetricType::Gauge,
            "Requests admitted and not finished.",
        );
        w.sample_u64(
            "garrison_admission_in_flight",
            &[],
            i.in_flight.load(Ordering::Relaxed) as u64,
        );
        w.family(
            "garrison_admission_limit",
            MetricType::Gauge,
            "Requests admitted at most at once (it moves when adaptive).",
        );
        w.sample_u64(
            "garrison_admission_limit",
            &[],
            i.limit.load(Ordering::Relaxed) as u64,
        );
        let depths: [usize; 5] = {
            let q = i.queue.lock();
            std::array::from_fn(|c| q.classes[c].len())
        };
        w.family(
            "garrison_admission_queue_depth",
            MetricType::Gauge,
            "Requests waiting for a slot, by priority.",
        );
        for p in Priority::ALL {
            w.sample_u64(
                "garrison_admission_queue_depth",
                &[("priority", p.as_str())],
                depths[p.index()] as u64,
            );
        }
        w.family(
            "garrison_admission_admitted",
            MetricType::Counter,
            "Requests admitted, by priority.",
        );
        for p in Priority::ALL {
            w.sample_u64(
                "garrison_admission_admitted",
                &[("priority", p.as_str())],
                i.admitted.get(p.index()),
            );
        }
        w.family(
            "garrison_admission_shed",
            MetricType::Counter,
            "Requests shed with 503, by priority and reason (queue_full, timeout, evicted).",
        );
        for p in Priority::ALL {
            for (r, reason) in ShedReason::ALL.iter().enumerate() {
                w.sample_u64(
                    "garrison_admission_shed",
                    &[("priority", p.as_str()), ("reason", reason.as_str())],
                    i.shed[p.index()][r].load(Ordering::Relaxed),
                );
            }
        }
        w.histogram_family(
            "garrison_admission_wait_seconds",
            "Time queued requests waited for a slot, by priority (requests admitted at once do not wait).",
        );
        for p in Priority::ALL {
            w.histogram(
                "garrison_admission_wait_seconds",
                &[("priority", p.as_str())],
                &i.wait[p.index()],
            );
        }
    }
}
