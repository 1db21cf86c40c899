//! A coarse timer for the deadlines every request has: hyper's header read timeout and the
//! upstream's response-head timeout.
//!
//! Each proxied request arms two deadlines that almost never fire. Through tokio's timer
//! each costs an entry put into and taken out of the timer wheel, and a wheel that has entries
//! makes every park of the event loop look for the next expiry: work on every request for
//! deadlines that almost never fire (docs/performance.md has the cost).
//!
//! Here a deadline is a slot in a table per thread, due after a number of ticks. It costs
//! two uncontended locks and one reference count, and no clock read. One task per thread,
//! running only while a deadline is armed, ticks at most every [`GRAIN`] and wakes what is
//! due. As ticks are at least a grain apart, a deadline fires at least its duration after it
//! was armed, and at most two grains later (plus the event loop's delay under load).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// How often armed deadlines are looked at: how late one may fire.
pub(crate) const GRAIN: Duration = Duration::from_millis(10);

/// The deadlines of one thread.
#[derive(Default)]
struct Table {
    slots: Vec<TimerSlot>,
    free: Vec<usize>,
    /// Deadlines in use that have not fired: the ticking task runs while there are any (a
    /// fired deadline that a connection keeps for its next request does not keep it).
    armed: usize,
    /// Whether this table's ticking task runs.
    ticking: bool,
    /// Ticks so far: a deadline is due at a tick count.
    ticks: u64,
    /// Which ticking task is the current one: an old one that ends late must not clear
    /// `ticking` for its successor.
    ticker: u64,
}

impl Table {
    /// Starts the ticking task if none runs and there is a runtime to run it; whether one
    /// runs now.
    fn tick_if_idle(&mut self, table: &SharedTable) -> bool {
        if self.ticking {
            return true;
        }
        // outside a runtime there is no task to tick: a deadline then fires when it is
        // next polled after its time
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.ticking = true;
            self.ticker += 1;
            rt.spawn(tick(Arc::downgrade(table), self.ticker));
        }
        self.ticking
    }
}

struct TimerSlot {
    /// The tick at which it is due.
    due: u64,
    /// Its time, kept only where no runtime ticks (it is then checked when polled).
    at: Option<Instant>,
    waker: Option<Waker>,
    fired: bool,
    used: bool,
}

type SharedTable = Arc<Mutex<Table>>;

thread_local! {
    static TABLE: SharedTable = Arc::default();
}

/// A deadline armed in its thread's table: ready once it has passed.
pub(crate) struct Deadline {
    table: SharedTable,
    index: usize,
}

impl Deadline {
    /// A deadline at `at`.
    pub(crate) fn at(at: Instant) -> Self {
        Self::after(at.saturating_duration_since(Instant::now()))
    }

    /// A deadline `after` from now.
    pub(crate) fn after(after: Duration) -> Self {
        let ticks = ticks_for(after);
        let table = TABLE.with(Arc::clone);
        let index = {
            let mut t = table.lock();
            let ticking = t.tick_if_idle(&table);
            let slot = TimerSlot {
                due: t.ticks.saturating_add(ticks),
                at: (!ticking).then(|| Instant::now() + after),
                waker: None,
                fired: false,
                used: true,
            };
            let index = match t.free.pop() {
                Some(i) => {
                    t.slots[i] = slot;
                    i
                }
                None => {
                    t.slots.push(slot);
                    t.slots.len() - 1
                }
            };
            t.armed += 1;
            index
        };
        Self { table, index }
    }
}

/// The ticks a deadline `after` from now waits: as many grains as it lasts, and one more, as
/// the next tick may come at once.
fn ticks_for(after: Duration) -> u64 {
    u64::try_from(after.as_nanos().div_ceil(GRAIN.as_nanos()))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl Deadline {
    /// Due at `at` instead, not fired.
    fn rearm(self: Pin<&mut Self>, at: Instant) {
        let ticks = ticks_for(at.saturating_duration_since(Instant::now()));
        let mut t = self.table.lock();
        let ticking = t.tick_if_idle(&self.table);
        let now = t.ticks;
        let slot = &mut t.slots[self.index];
        slot.due = now.saturating_add(ticks);
        slot.at = (!ticking).then_some(at);
        if std::mem::replace(&mut slot.fired, false) {
            t.armed += 1;
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut t = self.table.lock();
        // a ticker dropped with its runtime: this runtime starts another
        t.tick_if_idle(&self.table);
        let slot = &mut t.slots[self.index];
        if slot.fired {
            return Poll::Ready(());
        }
        if slot.at.is_some_and(|at| Instant::now() >= at) {
            slot.fired = true;
            t.armed -= 1;
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        let slot = &mut t.slots[self.index];
        slot.used = false;
        slot.waker = None;
        let fired = slot.fired;
        t.free.push(self.index);
        if !fired {
            t.armed -= 1;
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

/// Wakes the due deadlines of one thread's table every [`GRAIN`], while any is armed.
async fn tick(table: std::sync::Weak<Mutex<Table>>, me: u64) {
    /// Marks the table as not ticking however the task ends (a runtime shutting down drops
    /// it), so that the next deadline starts a new one.
    struct Stopped(std::sync::Weak<Mutex<Table>>, u64);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(t) = self.0.upgrade() {
                let mut t = t.lock();
                if t.ticker == self.1 {
                    t.ticking = false;
                }
            }
        }
    }
    let _stopped = Stopped(table.clone(), me);
    let mut every = tokio::time::interval(GRAIN);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(table) = table.upgrade() else { return };
        let mut due = Vec::new();
        {
            let mut t = table.lock();
            t.ticks += 1;
            let now = t.ticks;
            if t.armed == 0 {
                // decided under the lock: a deadline armed after this starts a new ticker
                t.ticking = false;
                return;
            }
            let mut fired = 0;
            for slot in t.slots.iter_mut() {
                if slot.used && !slot.fired && slot.due <= now {
                    slot.fired = true;
                    fired += 1;
                    if let Some(w) = slot.waker.take() {
                        due.push(w);
                    }
                }
            }
            t.armed -= fired;
        }
        // woken outside the lock: a woken task may arm or drop a deadline at once
        for w in due {
            w.wake();
        }
    }
}

/// The gateway's [`hyper::rt::Timer`]: [`Deadline`]s for hyper's header read timeout.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::after(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(Instant::from_std(deadline)))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        // hyper re-arms the header read timeout of every request on a connection: in place
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(d) => d.rearm(Instant::from_std(new_deadline)),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

pin_project! {
    /// `fut`, or `Err(Elapsed)` once its deadline has passed.
    pub(crate) struct Timeout<F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Deadline,
    }
}

/// The deadline of a [`Timeout`] passed first.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// `fut` within `after`, by a coarse [`Deadline`].
pub(crate) fn timeout<F: Future>(after: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        deadline: Deadline::after(after),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        this.deadline.poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for a new deadline `after` from now, under tokio's own timer (a deadline that
    /// never fires fails here instead of hanging), and checks that it did not fire early;
    /// how long it took.
    async fn fires_after(after: Duration, why: &str) -> Duration {
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(1), Deadline::after(after))
            .await
            .expect(why);
        let took = start.elapsed();
        assert!(took >= after, "{why}: fired after {took:?} of {after:?}");
        took
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_after_its_time_never_before() {
        let took = fires_after(Duration::from_millis(100), "a deadline fires").await;
        assert!(took <= Duration::from_millis(100) + 2 * GRAIN, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_passes_a_quick_future_and_stops_a_slow_one() {
        let quick = timeout(Duration::from_millis(50), async { 7 }).await;
        assert_eq!(quick.unwrap(), 7);
        let start = Instant::now();
        let slow = timeout(
            Duration::from_millis(50),
            tokio::time::sleep(Duration::from_secs(5)),
        )
        .await;
        assert!(slow.is_err());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50) && took <= Duration::from_millis(50) + 2 * GRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_deadlines_give_their_slots_back_and_the_ticker_stops() {
        for _ in 0..1000 {
            drop(Deadline::after(Duration::from_secs(1)));
        }
        let table = TABLE.with(Arc::clone);
        assert_eq!(table.lock().armed, 0);
        assert!(table.lock().slots.len() <= 1, "slots are reused");
        // with nothing armed the ticking task ends
        tokio::time::sleep(GRAIN * 3).await;
        assert!(!table.lock().ticking);
        // and a new deadline starts it again
        fires_after(Duration::from_millis(30), "a new ticker fires it").await;
    }

    #[tokio::test(start_paused = true)]
    async fn many_deadlines_fire_in_their_order() {
        let start = Instant::now();
        let mut handles = Vec::new();
        for ms in [300u64, 100, 200, 50] {
            handles.push(tokio::spawn(async move {
                Deadline::after(Duration::from_millis(ms)).await;
                (ms, start.elapsed())
            }));
        }
        for h in handles {
            let (ms, took) = h.await.unwrap();
            assert!(took >= Duration::from_millis(ms), "{ms}: {took:?}");
            assert!(
                took <= Duration::from_millis(ms) + 2 * GRAIN,
                "{ms}: {took:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fired_deadline_kept_for_later_does_not_keep_the_ticker_running() {
        let mut d = Box::pin(Deadline::after(Duration::from_millis(20)));
        d.as_mut().await;
        let table = TABLE.with(Arc::clone);
        assert_eq!(table.lock().armed, 0);
        tokio::time::sleep(GRAIN * 3).await;
        assert!(!table.lock().ticking, "nothing armed: no ticking");
        // re-armed, it counts again and a ticker fires it
        let start = Instant::now();
        d.as_mut().rearm(start + Duration::from_millis(30));
        assert_eq!(table.lock().armed, 1);
        tokio::time::timeout(Duration::from_secs(1), d.as_mut())
            .await
            .expect("re-armed deadlines fire");
        assert!(start.elapsed() >= Duration::from_millis(30));
        drop(d);
        assert_eq!(table.lock().armed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_resets_a_deadline_in_place() {
        use hyper::rt::Timer;
        let timer = CoarseTimer;
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_millis(40));
        let boxed = |s: &Pin<Box<dyn hyper::rt::Sleep>>| {
            &**s as *const dyn hyper::rt::Sleep as *const () as usize
        };
        let first = boxed(&sleep);
        // moved later before it fires: it does not fire at the old time
        timer.reset(&mut sleep, (start + Duration::from_millis(200)).into_std());
        assert_eq!(boxed(&sleep), first, "re-armed in its box, not replaced");
        sleep.as_mut().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        // fired, then re-armed: it waits again
        let again = Instant::now();
        timer.reset(&mut sleep, (again + Duration::from_millis(50)).into_std());
        sleep.as_mut().await;
        assert!(again.elapsed() >= Duration::from_millis(50));
        assert_eq!(boxed(&sleep), first);
    }

    #[test]
    fn a_runtime_that_ends_leaves_the_thread_able_to_tick_again() {
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                // a ticker left for dead by the runtime before would hang this without
                // the guard of tokio's own timer in `fires_after`
                fires_after(
                    Duration::from_millis(20),
                    "the deadline fires on a second runtime of the thread",
                )
                .await;
                // armed when the runtime goes: its ticker is dropped mid-wait
                std::mem::forget(Deadline::after(Duration::from_secs(60)));
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A client connection whose writes may wait for the client at most `limit`: a client
    /// that stops reading (its receive window full, or never read) gets its connection
    /// closed instead of holding the response, and the upstream connection behind it, for
    /// as long as it likes. The timer is made only when a write has to wait.
    pub(crate) struct SendTimeout<T> {
        #[pin]
        inner: T,
        limit: Duration,
        stall: Option<Deadline>,
    }
}

impl<T> SendTimeout<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stall: None,
        }
    }
}

impl<T> SendTimeout<T> {
    /// What a write that returned `polled` means once the wait for the client is counted.
    fn waited<R>(
        limit: Duration,
        stall: &mut Option<Deadline>,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Pending => {
                // the coarse timer: no allocation, no entry in tokio's wheel
                let timer = stall.get_or_insert_with(|| Deadline::after(limit));
                if Pin::new(timer).poll(cx).is_ready() {
                    *stall = None;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing for the send timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                *stall = None;
                ready
            }
        }
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for SendTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for SendTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        Self::waited(*this.limit, this.stall, cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        Self::waited(*this.limit, this.stall, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        Self::waited(*this.limit, this.stall, cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
