//! Every transition of the breaker, driven by a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use garrison_breaker::{
    Breaker, BreakerConfig, BreakerRegistry, CallOutcome, State, Window, WindowCounts,
};
use garrison_core::{ManualClock, SharedClock};
use garrison_metrics::{Format, MetricsRegistry};

mod common;

const F: CallOutcome = CallOutcome::Failure;
const S: CallOutcome = CallOutcome::Success;

fn setup(config: BreakerConfig) -> (Arc<ManualClock>, BreakerRegistry, Breaker) {
    let clock = Arc::new(ManualClock::new());
    let registry = BreakerRegistry::with_clock(SharedClock::from_arc(clock.clone()));
    let b = registry.breaker("dep", config.retry_after_jitter(0.0));
    (clock, registry, b)
}

fn call(b: &Breaker, outcome: CallOutcome) {
    b.try_acquire().expect("admitted").record(outcome);
}

fn count_config() -> BreakerConfig {
    common::config()
}

#[test]
fn count_window_opens_at_the_threshold_once_minimum_calls_are_seen() {
    let (_, _, b) = setup(count_config());
    for _ in 0..3 {
        call(&b, F);
    }
    assert_eq!(b.state(), State::Closed, "3 calls < minimum 4");
    call(&b, F);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.transitions(State::Closed, State::Open), 1);
}

#[test]
fn count_window_stays_closed_below_the_threshold_and_forgets_old_calls() {
    let (_, _, b) = setup(count_config());
    // never 50% failed once 4 calls are in: ends with 4 failures among 10 calls
    for o in [S, S, F, S, F, S, S, F, S, F] {
        call(&b, o);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.snapshot().window,
        WindowCounts {
            calls: 10,
            failures: 4,
            slow: 0
        }
    );
    // successes push out the oldest calls: S, S, then the first F
    call(&b, S);
    call(&b, S);
    assert_eq!(b.snapshot().window.failures, 4);
    call(&b, S);
    assert_eq!(
        b.snapshot().window,
        WindowCounts {
            calls: 10,
            failures: 3,
            slow: 0
        }
    );
    // two more failures push out S and F: 4 of 10, then F pushes out S: 5 of 10 = 50%
    call(&b, F);
    call(&b, F);
    assert_eq!(b.state(), State::Closed);
    call(&b, F);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn time_window_counts_only_recent_seconds() {
    let config = count_config().window(Window::Time(Duration::from_secs(10)));
    let (clock, _, b) = setup(config);
    for _ in 0..3 {
        call(&b, F);
    }
    clock.advance(Duration::from_secs(11)); // those three leave the window
    call(&b, F);
    call(&b, S);
    call(&b, S);
    assert_eq!(
        b.snapshot().window,
        WindowCounts {
            calls: 3,
            failures: 1,
            slow: 0
        }
    );
    assert_eq!(b.state(), State::Closed);
    clock.advance(Duration::from_secs(2));
    call(&b, F); // 2 of 4 within 10 s
    assert_eq!(b.state(), State::Open);
}

#[test]
fn slow_calls_open_the_breaker() {
    let config = count_config()
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(0.5);
    let (clock, _, b) = setup(config);
    for slow in [true, false, true, true] {
        let p = b.try_acquire().unwrap();
        clock.advance(if slow {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(10)
        });
        p.record(S);
    }
    assert_eq!(b.state(), State::Open, "3 of 4 calls slow, all successful");
    assert_eq!(b.snapshot().calls[2], ("slow", 3));
}

#[test]
fn a_call_is_slow_from_exactly_the_slow_call_duration_on() {
    let config = count_config()
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(1.0);
    let (clock, _, b) = setup(config);
    for took in [999, 1000, 1001] {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(took));
        p.record(S);
    }
    assert_eq!(
        b.snapshot().calls[2],
        ("slow", 2),
        "1 000 ms and 1 001 ms are slow"
    );
    assert_eq!(b.snapshot().calls[0], ("success", 1), "999 ms is not");
}

#[test]
fn open_rejects_with_the_remaining_wait_then_probes() {
    let (clock, _, b) = setup(count_config());
    for _ in 0..4 {
        call(&b, F);
    }
    let r = b.try_acquire().unwrap_err();
    assert_eq!(
        (r.state, r.retry_after),
        (State::Open, Duration::from_secs(30))
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Duration::from_secs(20)
    );
    assert_eq!(b.snapshot().open_remaining, Some(Duration::from_secs(20)));
    clock.advance(Duration::from_secs(20));
    let probe = b.try_acquire().expect("the wait is over: a probe");
    assert!(probe.is_probe());
    assert_eq!(b.state(), State::HalfOpen);
    drop(probe);
}

#[test]
fn half_open_admits_exactly_the_probes_and_closes_on_success() {
    let (clock, _, b) = setup(count_config());
    for _ in 0..4 {
        call(&b, F);
    }
    clock.advance(Duration::from_secs(30));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    let r = b.try_acquire().unwrap_err();
    assert_eq!(r.state, State::HalfOpen);
    for p in probes {
        p.record(S);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.snapshot().window,
        WindowCounts::default(),
        "a closed breaker starts afresh"
    );
    assert_eq!(b.snapshot().trips, 0);
}

#[test]
fn half_open_reopens_on_failed_probes_with_a_growing_wait() {
    let config = count_config().exponential_wait(2.0, Duration::from_secs(100));
    let (clock, _, b) = setup(config);
    for _ in 0..4 {
        call(&b, F);
    }
    let mut waits = Vec::new();
    for _ in 0..3 {
        let wait = b.try_acquire().unwrap_err().retry_after;
        waits.push(wait.as_secs());
        clock.advance(wait);
        // two of three probes fail: 67% ≥ 50%
        for o in [F, S, F] {
            call(&b, o);
        }
        assert_eq!(b.state(), State::Open);
    }
    assert_eq!(waits, [30, 60, 100], "30 s, doubled, capped at 100 s");
    assert_eq!(b.transitions(State::HalfOpen, State::Open), 3);

    // Once it closes, the next trip waits the base time again.
    clock.advance(Duration::from_secs(100));
    for _ in 0..3 {
        call(&b, S);
    }
    assert_eq!(b.state(), State::Closed);
    for _ in 0..4 {
        call(&b, F);
    }
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Duration::from_secs(30)
    );
}

#[test]
fn a_cancelled_probe_gives_its_slot_back() {
    let (clock, _, b) = setup(count_config());
    for _ in 0..4 {
        call(&b, F);
    }
    clock.advance(Duration::from_secs(30));
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    let p3 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p2); // the client went away
    let p4 = b.try_acquire().expect("the slot came back");
    for p in [p1, p3, p4] {
        p.record(S);
    }
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn outcomes_of_calls_from_an_earlier_state_are_ignored() {
    let (clock, _, b) = setup(count_config());
    let late = b.try_acquire().unwrap(); // admitted while closed
    for _ in 0..4 {
        call(&b, F);
    }
    clock.advance(Duration::from_secs(30));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    late.record(F); // must not count as a probe result
    for p in probes {
        p.record(S);
    }
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn forced_open_and_disabled_are_operator_states() {
    let (_, registry, b) = setup(count_config());
    registry.force_open("dep").unwrap();
    assert_eq!(b.try_acquire().unwrap_err().state, State::ForcedOpen);
    registry.reset("dep").unwrap();
    assert_eq!(b.state(), State::Closed);

    registry.disable("dep").unwrap();
    for _ in 0..20 {
        call(&b, F);
    }
    assert_eq!(b.state(), State::Disabled, "a disabled breaker never opens");
    assert_eq!(b.snapshot().calls[1], ("failure", 0), "and records nothing");
    registry.reset("dep").unwrap();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        registry.force_open("nope").unwrap_err().to_string(),
        "no circuit breaker named `nope`"
    );
}

#[test]
fn listeners_metrics_and_listing_follow_transitions() {
    let (clock, registry, b) = setup(count_config());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    registry.on_transition(move |t| log.lock().unwrap().push((t.breaker.clone(), t.from, t.to)));
    for _ in 0..4 {
        call(&b, F);
    }
    assert!(b.try_acquire().is_err());
    clock.advance(Duration::from_secs(30));
    for _ in 0..3 {
        call(&b, S);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("dep".to_owned(), State::Closed, State::Open),
            ("dep".to_owned(), State::Open, State::HalfOpen),
            ("dep".to_owned(), State::HalfOpen, State::Closed),
        ]
    );
    let list = registry.list();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].calls,
        [("success", 3), ("failure", 4), ("slow", 0), ("rejected", 1)]
    );
    assert!(!registry.any_open());

    let metrics = MetricsRegistry::builder()
        .process_metrics(false)
        .runtime_metrics(false)
        .build();
    metrics.register_collector(Arc::new(registry.clone()));
    let text = metrics.render(Format::Prometheus);
    for line in [
        "garrison_breaker_state{breaker=\"dep\",state=\"closed\"} 1\n",
        "garrison_breaker_state{breaker=\"dep\",state=\"open\"} 0\n",
        "garrison_breaker_calls_total{breaker=\"dep\",outcome=\"rejected\"} 1\n",
        "garrison_breaker_transitions_total{breaker=\"dep\",from=\"closed\",to=\"open\"} 1\n",
        "garrison_breaker_transitions_total{breaker=\"dep\",from=\"half_open\",to=\"closed\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[test]
fn retry_after_jitter_stays_within_its_share() {
    let clock = Arc::new(ManualClock::new());
    let registry = BreakerRegistry::with_clock(SharedClock::from_arc(clock));
    let b = registry.breaker("j", count_config().retry_after_jitter(0.1));
    b.force_open();
    let waits: Vec<Duration> = (0..200)
        .map(|_| b.try_acquire().unwrap_err().retry_after)
        .collect();
    assert!(waits
        .iter()
        .all(|w| *w >= Duration::from_secs(30) && *w <= Duration::from_secs(33)));
    assert!(waits.iter().any(|w| *w != waits[0]), "jitter varies");
}

#[test]
fn a_failure_count_opens_at_that_many_failures_in_the_window_whatever_their_share() {
    let config = BreakerConfig::default()
        .window(Window::Time(Duration::from_secs(30)))
        .minimum_calls(100)
        .failure_count(5);
    let (clock, _, b) = setup(config);
    // 4 failures among many successes: 4 is under the count, and the share does not count
    for _ in 0..200 {
        call(&b, S);
    }
    for _ in 0..4 {
        call(&b, F);
    }
    assert_eq!(b.state(), State::Closed);
    // the window forgets them: 4 more failures 31 s later are again under 5
    clock.advance(Duration::from_secs(31));
    for _ in 0..4 {
        call(&b, F);
    }
    assert_eq!(b.state(), State::Closed, "{:?}", b.snapshot().window);
    // the fifth within the window opens it, with only 4 + 1 calls seen (minimum_calls 100)
    call(&b, F);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_analytics_profile_opens_at_8_failures_in_45_seconds() {
    let config = BreakerConfig::profile("analytics").unwrap();
    config.validate().unwrap();
    let (clock, _, b) = setup(config);
    for _ in 0..7 {
        call(&b, F);
        clock.advance(Duration::from_secs(5));
    }
    assert_eq!(b.state(), State::Closed, "7 failures in 35 s");
    call(&b, F);
    assert_eq!(b.state(), State::Open, "the 8th within 45 s");
}

#[test]
fn every_transition_is_logged_and_an_opening_is_a_warning() {
    let logs = garrison_core::testing::LogCapture::start("garrison_breaker");
    let (clock, _, b) = setup(count_config().wait_in_open(Duration::from_secs(5)));
    for _ in 0..4 {
        call(&b, F);
    }
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(6));
    while b.state() != State::Closed {
        call(&b, S);
    }
    let lines = logs.lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("WARN")
            && lines[0].contains("from=closed")
            && lines[0].contains("to=open"),
        "{lines:#?}"
    );
    assert!(
        lines[0].contains("breaker=dep") && lines[0].contains("failures=4"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("INFO") && lines[1].contains("to=half_open"),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("INFO") && lines[2].contains("to=closed"),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .all(|l| l.contains("circuit breaker state changed")));
}
