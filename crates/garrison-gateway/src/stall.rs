//! The send timeout of an HTTP/2 connection's streams.
//!
//! Over HTTP/1 a client that stops reading stops the gateway's writes, and the
//! connection's [`SendTimeout`](crate::timer::SendTimeout) closes it. Over HTTP/2 the
//! socket keeps moving while a stream waits: a client that leaves a stream's flow-control
//! window at zero (or never opens it) gets the response head and none of its body, and hyper
//! stops polling that body, so the response (and the upstream connection it is read from)
//! is held for as long as the client likes. Nothing inside the body can notice, as nothing
//! polls it; so each body says when it is handed to hyper and when hyper comes back for
//! more, and a watchdog of the connection closes it when a body has waited for the client
//! longer than `send_timeout`.
//!
//! The watchdog looks every `send_timeout`: a body is found stalled between one and two
//! `send_timeout`s after its wait began. Bodies count themselves into one of two counters by
//! the parity of the watchdog's tick, so that the watchdog reads two numbers, and a body
//! changes one, without a list of bodies or a clock read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

/// One client connection's response bodies that wait for the client to take more of them.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    /// Bumped by the watchdog every `send_timeout`.
    tick: AtomicU32,
    /// Bodies waiting, by the parity of the tick their wait began in.
    waiting: [AtomicU32; 2],
    /// Set by the connection's first HTTP/2 request: HTTP/1 connections never start the
    /// watchdog's timer.
    started: AtomicBool,
    /// The connection's task, woken when the watchdog starts.
    task: AtomicWaker,
}

impl Stalls {
    /// Starts the watchdog of [`watch`](Self::watch); called for every HTTP/2 request, it
    /// costs one load after the first.
    pub(crate) fn start(&self) {
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
            self.task.wake();
        }
    }

    /// Ready once a body of the connection has waited for the client for `limit` (and at
    /// most twice that); never for a connection whose watchdog was not started. Until then a
    /// poll costs one load: the connection's task polls it at every wake.
    pub(crate) fn watch(&self, limit: Duration) -> Watch<'_> {
        Watch {
            stalls: self,
            limit,
            registered: false,
            sleep: None,
        }
    }

    /// One tick of the watchdog: whether a body that began to wait during the last tick
    /// still waits. When none does, its counter becomes the one new waits count in.
    fn stalled(&self) -> bool {
        let tick = self.tick.load(Ordering::Relaxed);
        let older = &self.waiting[(tick.wrapping_add(1) & 1) as usize];
        if older.load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.tick.store(tick.wrapping_add(1), Ordering::Relaxed);
        false
    }
}

/// The watchdog of one connection's [`Stalls`]: see [`Stalls::watch`].
#[derive(Debug)]
pub(crate) struct Watch<'a> {
    stalls: &'a Stalls,
    limit: Duration,
    /// Whether the task's waker is with `stalls`, for [`Stalls::start`] to wake.
    registered: bool,
    /// The timer of the tick in progress, made when the watchdog starts.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.stalls.started.load(Ordering::Relaxed) {
            if this.registered {
                return Poll::Pending;
            }
            this.stalls.task.register(cx.waker());
            this.registered = true;
            // started between the look and the registration: go on
            if !this.stalls.started.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
        }
        let limit = this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if this.stalls.stalled() {
                return Poll::Ready(());
            }
            let next = sleep.deadline() + limit;
            sleep.as_mut().reset(next);
        }
    }
}

/// A response body's place among its connection's [`Stalls`]: waiting from the moment
/// hyper has the body (or its last frame) until hyper polls it again.
#[derive(Debug)]
pub(crate) struct Waiting {
    stalls: Arc<Stalls>,
    /// The counter the wait in progress is in.
    counted: Option<usize>,
}

impl Waiting {
    /// A body handed to hyper now: it waits until first polled.
    pub(crate) fn new(stalls: Arc<Stalls>) -> Self {
        let mut w = Self {
            stalls,
            counted: None,
        };
        w.begin();
        w
    }

    /// The body gave hyper a frame: until polled again, it waits for the client.
    pub(crate) fn begin(&mut self) {
        if self.counted.is_none() {
            let i = (self.stalls.tick.load(Ordering::Relaxed) & 1) as usize;
            self.stalls.waiting[i].fetch_add(1, Ordering::Relaxed);
            self.counted = Some(i);
        }
    }

    /// Hyper polled the body: it no longer waits for the client.
    pub(crate) fn end(&mut self) {
        if let Some(i) = self.counted.take() {
            self.stalls.waiting[i].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_found_on_the_second_tick_after_it_began_and_not_once_it_ended() {
        let stalls = Arc::new(Stalls::default());
        let mut w = Waiting::new(stalls.clone());
        assert!(
            !stalls.stalled(),
            "the first tick: the wait may have just begun"
        );
        assert!(
            stalls.stalled(),
            "the second tick: it waited a whole period"
        );
        w.end();
        assert!(!stalls.stalled());
        assert!(!stalls.stalled());
        // a body that is polled between the ticks never stalls its connection
        w.begin();
        assert!(!stalls.stalled());
        w.end();
        w.begin();
        assert!(!stalls.stalled());
        w.end();
        assert!(!stalls.stalled());
        // a dropped body ends its wait
        w.begin();
        drop(w);
        assert!(!stalls.stalled());
        assert!(!stalls.stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_returns_only_once_started_and_a_body_waits() {
        let stalls = Arc::new(Stalls::default());
        let limit = Duration::from_secs(60);
        let _w = Waiting::new(stalls.clone());
        let never = tokio::time::timeout(Duration::from_secs(3600), stalls.watch(limit)).await;
        assert!(never.is_err(), "an HTTP/1 connection has no watchdog");
        stalls.start();
        let began = tokio::time::Instant::now();
        stalls.watch(limit).await;
        let waited = began.elapsed();
        assert!(waited >= limit && waited <= 2 * limit, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watchdog_waiting_to_start_is_woken_by_the_first_http2_request() {
        let stalls = Arc::new(Stalls::default());
        let limit = Duration::from_secs(60);
        let _w = Waiting::new(stalls.clone());
        let watching = tokio::spawn({
            let stalls = stalls.clone();
            async move { stalls.watch(limit).await }
        });
        // the watchdog has polled once, found nothing started, and waits to be woken
        tokio::task::yield_now().await;
        assert!(!watching.is_finished());
        stalls.start();
        let done = tokio::time::timeout(3 * limit, watching).await;
        assert!(done.is_ok(), "the start did not wake the watchdog");
    }
}
