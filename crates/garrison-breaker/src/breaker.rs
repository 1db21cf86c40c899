//! One circuit breaker: its state machine, permits and figures.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_core::{SharedClock, Tick};
use parking_lot::RwLock;

use crate::config::BreakerConfig;
use crate::window::{SlidingWindow, WindowCounts, FAILED, SLOW};

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass; outcomes are recorded.
    Closed = 0,
    /// Calls are rejected until the wait is over.
    Open = 1,
    /// A fixed number of probe calls pass; their outcomes decide.
    HalfOpen = 2,
    /// Opened by an operator: every call is rejected until reset.
    ForcedOpen = 3,
    /// Turned off by an operator: every call passes, nothing is recorded.
    Disabled = 4,
}

impl State {
    /// Every state.
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// The label, e.g. `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    fn from_bits(b: u64) -> State {
        match b & 7 {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, as given to [`BreakerRegistry::on_transition`](crate::BreakerRegistry::on_transition)
/// listeners.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: String,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// The window's figures at the moment of the change.
    pub window: WindowCounts,
}

pub(crate) type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// What a call was, for the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// It succeeded in time.
    Success,
    /// It failed (error, classified status, timeout).
    Failure,
}

/// Why a call was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The state that rejected it.
    pub state: State,
    /// When to try again (jittered so that clients do not return all at once).
    pub retry_after: Duration,
}

// Packed words: state = generation << 3 | state; probes = generation << 32 | count.
const GEN_SHIFT: u32 = 3;

#[inline]
fn pack(gen: u64, s: State) -> u64 {
    (gen << GEN_SHIFT) | s as u64
}

#[inline]
fn unpack(w: u64) -> (u64, State) {
    (w >> GEN_SHIFT, State::from_bits(w))
}

const OUTCOMES: [&str; 4] = ["success", "failure", "slow", "rejected"];

/// Decodes the probe results word: done, failed, slow (10 bits each) below the generation.
#[inline]
fn probe_counts(r: u64) -> WindowCounts {
    WindowCounts {
        calls: (r >> 20) & 1023,
        failures: (r >> 10) & 1023,
        slow: r & 1023,
    }
}

pub(crate) struct Inner {
    pub(crate) name: Box<str>,
    pub(crate) config: BreakerConfig,
    clock: SharedClock,
    base: Tick,
    state: AtomicU64,
    open_until_ms: AtomicU64,
    trips: AtomicU32,
    window: SlidingWindow,
    /// generation (low 32 bits of it) << 32 | probe permits left
    probes_left: AtomicU64,
    /// generation << 32 | done (10 bits) << 20 | failed (10 bits) << 10 | slow (10 bits)
    probe_results: AtomicU64,
    /// Calls by outcome since start, sharded per thread: every call counts one.
    calls: garrison_core::ShardedCounters<4>,
    transitions: [[AtomicU64; 5]; 5],
    listeners: Arc<RwLock<Vec<Listener>>>,
}

/// A circuit breaker. Cheap to clone; clones are the same breaker.
#[derive(Clone)]
pub struct Breaker {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Permission for one call. Report its outcome with [`record`](Self::record); dropped
/// unreported (the call was cancelled), it records nothing and gives a half-open probe slot
/// back.
#[must_use = "a permit records nothing unless its outcome is reported"]
pub struct Permit {
    inner: Arc<Inner>,
    gen: u64,
    kind: PermitKind,
    /// When the call becomes a slow call: its start plus the slow-call duration (the last
    /// tick there is, past the clock's range). Compared at the end instead of subtracting
    /// ticks.
    slow_at: Tick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PermitKind {
    Closed,
    Probe,
    Disabled,
    Spent,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The figures of one breaker, for the registry listing, health and the admin API.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSnapshot {
    /// The name.
    pub name: String,
    /// The state.
    pub state: State,
    /// Calls, failures and slow calls in the current window (or among the probes, when
    /// half-open).
    pub window: WindowCounts,
    /// Time left before an open breaker lets probes through.
    pub open_remaining: Option<Duration>,
    /// Consecutive trips without closing in between (drives the exponential wait).
    pub trips: u32,
    /// Calls by outcome since start: success, failure, slow, rejected.
    pub calls: [(&'static str, u64); 4],
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

fn jitter_unit() -> f64 {
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            // seed from the address of a stack value and the time: distinct per thread
            let local = 0u8;
            x = (&local as *const u8 as u64)
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

impl Breaker {
    pub(crate) fn new(
        name: &str,
        config: BreakerConfig,
        clock: SharedClock,
        listeners: Arc<RwLock<Vec<Listener>>>,
    ) -> Self {
        let base = clock.tick();
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                window: SlidingWindow::new(config.window),
                config,
                clock,
                base,
                state: AtomicU64::new(pack(0, State::Closed)),
                open_until_ms: AtomicU64::new(0),
                trips: AtomicU32::new(0),
                probes_left: AtomicU64::new(0),
                probe_results: AtomicU64::new(0),
                calls: Default::default(),
                transitions: Default::default(),
                listeners,
            }),
        }
    }

    /// A stand-alone breaker (not in any registry).
    pub fn standalone(name: &str, config: BreakerConfig, clock: SharedClock) -> Self {
        Self::new(name, config, clock, Arc::default())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state (an open breaker whose wait is over still reads `Open` until a call
    /// moves it to half-open).
    pub fn state(&self) -> State {
        unpack(self.inner.state.load(Ordering::Acquire)).1
    }

    /// Asks to make one call. Allocation-free.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.inner.try_acquire(&self.inner, None)
    }

    /// [`try_acquire`](Self::try_acquire) at `now`, a tick the caller has just read from
    /// this breaker's clock (a stack that asks several parts reads the clock once).
    #[inline]
    pub fn try_acquire_at(&self, now: Tick) -> Result<Permit, Rejected> {
        self.inner.try_acquire(&self.inner, Some(now))
    }

    /// Closes the breaker and forgets its window and trips.
    pub fn reset(&self) {
        self.inner.force(State::Closed);
    }

    /// Opens the breaker until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.inner.force(State::ForcedOpen);
    }

    /// Lets every call through and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.inner.force(State::Disabled);
    }

    /// The breaker's figures now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let i = &self.inner;
        let now = i.now_ms();
        let (gen, state) = unpack(i.state.load(Ordering::Acquire));
        let window = if state == State::HalfOpen {
            let r = i.probe_results.load(Ordering::Acquire);
            if r >> 32 == gen & 0xffff_ffff {
                probe_counts(r)
            } else {
                WindowCounts::default()
            }
        } else {
            i.window.counts(now)
        };
        let open_remaining = (state == State::Open).then(|| {
            Duration::from_millis(i.open_until_ms.load(Ordering::Acquire).saturating_sub(now))
        });
        BreakerSnapshot {
            name: i.name.to_string(),
            state,
            window,
            open_remaining,
            trips: i.trips.load(Ordering::Relaxed),
            calls: self.calls(),
        }
    }

    /// Calls by outcome since start: success, failure, slow, rejected.
    pub fn calls(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|k| (OUTCOMES[k], self.inner.calls.get(k)))
    }

    /// How many times the breaker went from `from` to `to`.
    pub fn transitions(&self, from: State, to: State) -> u64 {
        self.inner.transitions[from as usize][to as usize].load(Ordering::Relaxed)
    }
}

impl Inner {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.ms_at(self.clock.tick())
    }

    /// `t`, a tick of the breaker's clock, in the milliseconds of [`now_ms`](Self::now_ms).
    #[inline]
    fn ms_at(&self, t: Tick) -> u64 {
        t.nanos_since(self.base) / 1_000_000
    }

    #[inline]
    fn try_acquire(&self, this: &Arc<Inner>, at: Option<Tick>) -> Result<Permit, Rejected> {
        loop {
            let word = self.state.load(Ordering::Acquire);
            let (gen, state) = unpack(word);
            let kind = match state {
                State::Closed => PermitKind::Closed,
                State::Disabled => PermitKind::Disabled,
                State::ForcedOpen => return Err(self.reject(state, self.config.wait_in_open)),
                State::Open => {
                    let now = at.map_or_else(|| self.now_ms(), |t| self.ms_at(t));
                    let until = self.open_until_ms.load(Ordering::Acquire);
                    if now < until {
                        return Err(self.reject(state, Duration::from_millis(until - now)));
                    }
                    self.transition(word, State::HalfOpen, now);
                    continue;
                }
                State::HalfOpen => {
                    let g = gen & 0xffff_ffff;
                    let took =
                        self.probes_left
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                                (p >> 32 == g && p & 0xffff_ffff > 0).then(|| p - 1)
                            });
                    if took.is_err() {
                        // Every probe is out: come back about when they should be done.
                        return Err(self.reject(state, Duration::from_secs(1)));
                    }
                    PermitKind::Probe
                }
            };
            return Ok(Permit {
                inner: this.clone(),
                gen,
                kind,
                slow_at: at
                    .unwrap_or_else(|| self.clock.tick())
                    .saturating_add(self.config.slow_call_duration),
            });
        }
    }

    fn reject(&self, state: State, wait: Duration) -> Rejected {
        self.calls.add(3);
        let jitter = self.config.retry_after_jitter;
        let wait = if jitter > 0.0 {
            wait.mul_f64(1.0 + jitter * jitter_unit())
        } else {
            wait
        };
        Rejected {
            state,
            retry_after: wait,
        }
    }

    fn record(&self, gen: u64, kind: PermitKind, slow_at: Tick, outcome: CallOutcome) {
        if kind == PermitKind::Disabled {
            return;
        }
        let now = self.clock.tick();
        let slow = now >= slow_at;
        let failed = outcome == CallOutcome::Failure;
        let k = if failed {
            1
        } else if slow {
            2
        } else {
            0
        };
        self.calls.add(k);
        let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let now_ms = self.ms_at(now);
        let word = self.state.load(Ordering::Acquire);
        if word >> GEN_SHIFT != gen {
            // The breaker changed state since this call started: its outcome belongs to a
            // window that is gone.
            return;
        }
        match kind {
            PermitKind::Closed => {
                self.window.record(bits, now_ms);
                if bits != 0 {
                    let c = self.window.counts(now_ms);
                    if self.trips_closed(&c) {
                        self.transition(word, State::Open, now_ms);
                    }
                }
            }
            PermitKind::Probe => {
                let g = gen & 0xffff_ffff;
                let add = (1 << 20) | u64::from(failed) << 10 | u64::from(slow);
                let Ok(prev) =
                    self.probe_results
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                            (r >> 32 == g).then(|| r + add)
                        })
                else {
                    return;
                };
                let c = probe_counts(prev + add);
                if c.calls == u64::from(self.config.half_open_calls) {
                    let to = if self.over_threshold(&c) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.transition(word, to, now_ms);
                }
            }
            PermitKind::Disabled | PermitKind::Spent => {}
        }
    }

    /// Whether a closed breaker's window calls for opening: by the failure count when one is
    /// set, else by the failure rate once `minimum_calls` were seen; by the slow-call rate
    /// once `minimum_calls` were seen.
    fn trips_closed(&self, c: &WindowCounts) -> bool {
        let count = self.config.failure_count;
        if count > 0 {
            let seen = c.calls >= u64::from(self.config.minimum_calls);
            return c.failures >= u64::from(count)
                || (seen && c.slow_rate() >= self.config.slow_call_rate_threshold);
        }
        c.calls >= u64::from(self.config.minimum_calls) && self.over_threshold(c)
    }

    fn over_threshold(&self, c: &WindowCounts) -> bool {
        c.calls > 0
            && (c.failure_rate() >= self.config.failure_rate_threshold
                || c.slow_rate() >= self.config.slow_call_rate_threshold)
    }

    fn release_probe(&self, gen: u64) {
        let g = gen & 0xffff_ffff;
        let _ = self
            .probes_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p >> 32 == g).then(|| p + 1)
            });
    }

    /// Moves from the state in `word` to `to`; false when another thread moved first.
    fn transition(&self, word: u64, to: State, now_ms: u64) -> bool {
        let (gen, from) = unpack(word);
        let next_gen = gen + 1;
        if to == State::Open {
            // Written before the state, so no thread sees Open with a stale deadline.
            let trips = self.trips.load(Ordering::Relaxed) + 1;
            let wait = self.config.open_wait(trips).as_millis() as u64;
            self.open_until_ms.store(now_ms + wait, Ordering::Release);
        }
        if self
            .state
            .compare_exchange(
                word,
                pack(next_gen, to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        self.entered(from, to, next_gen, now_ms);
        true
    }

    fn entered(&self, from: State, to: State, gen: u64, now_ms: u64) {
        let g = (gen & 0xffff_ffff) << 32;
        let window = if from == State::HalfOpen {
            probe_counts(self.probe_results.load(Ordering::Acquire))
        } else {
            self.window.counts(now_ms)
        };
        match to {
            State::Open => {
                self.trips.fetch_add(1, Ordering::Relaxed);
                self.probes_left.store(g, Ordering::Release);
            }
            State::HalfOpen => {
                self.probe_results.store(g, Ordering::Release);
                self.probes_left.store(
                    g | u64::from(self.config.half_open_calls),
                    Ordering::Release,
                );
            }
            State::Closed => {
                self.trips.store(0, Ordering::Relaxed);
                self.window.reset();
                self.probes_left.store(g, Ordering::Release);
            }
            State::ForcedOpen | State::Disabled => {
                self.probes_left.store(g, Ordering::Release);
            }
        }
        self.transitions[from as usize][to as usize].fetch_add(1, Ordering::Relaxed);
        // opening means a dependency is failing: a warning; the rest is information
        macro_rules! changed {
            ($level:ident) => {
                tracing::$level!(
                    breaker = %self.name,
                    from = from.as_str(),
                    to = to.as_str(),
                    calls = window.calls,
                    failures = window.failures,
                    slow = window.slow,
                    "circuit breaker state changed"
                )
            };
        }
        if to == State::Open {
            changed!(warn);
        } else {
            changed!(info);
        }
        let listeners = self.listeners.read().clone();
        if !listeners.is_empty() {
            let t = Transition {
                breaker: self.name.to_string(),
                from,
                to,
                window,
            };
            for l in listeners {
                l(&t);
            }
        }
    }

    fn force(&self, to: State) {
        loop {
            let word = self.state.load(Ordering::Acquire);
            let now = self.now_ms();
            if unpack(word).1 == to {
                if to == State::Closed {
                    self.window.reset();
                    self.trips.store(0, Ordering::Relaxed);
                }
                return;
            }
            if self.transition(word, to, now) {
                if to == State::Closed {
                    self.trips.store(0, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

impl Permit {
    /// Reports the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: CallOutcome) {
        let kind = std::mem::replace(&mut self.kind, PermitKind::Spent);
        self.inner.record(self.gen, kind, self.slow_at, outcome);
    }

    /// Reports a response: a failure when the breaker's classifier says its status is one.
    #[inline]
    pub fn record_status(self, status: http::StatusCode) {
        let outcome = if self.inner.config.classifier.is_failure_status(status) {
            CallOutcome::Failure
        } else {
            CallOutcome::Success
        };
        self.record(outcome);
    }

    /// Reports what a service call returned: its response's status
    /// ([`record_status`](Self::record_status)), or a failure for an error.
    #[inline]
    pub fn record_result<B, E>(self, result: &Result<http::Response<B>, E>) {
        match result {
            Ok(resp) => self.record_status(resp.status()),
            Err(_) => self.record(CallOutcome::Failure),
        }
    }

    /// Whether this permit is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.kind == PermitKind::Probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.kind == PermitKind::Probe {
            self.inner.release_probe(self.gen);
        }
    }
}
