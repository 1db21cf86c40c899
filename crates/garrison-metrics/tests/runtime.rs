//! The runtime's lag, on tokio's paused clock: the probe's lateness is what the runtime kept
//! it waiting past its timer.

use std::time::Duration;

use garrison_metrics::{Format, MetricsRegistry};

fn lag(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("tokio_runtime_scheduling_delay_seconds "))
        .unwrap_or_else(|| panic!("no scheduling delay in\n{text}"))
        .parse()
        .unwrap()
}

/// Lets the probe task run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_scheduling_delay_is_how_late_the_probe_woke() {
    let registry = MetricsRegistry::new();
    // the first scrape starts the probe: nothing measured yet
    assert_eq!(lag(&registry.render(Format::Prometheus)), 0.0);
    settle().await;
    // the probe's timer is due after 250 ms; the runtime reaches it 300 ms late (the clock
    // moves while the probe cannot run)
    tokio::time::advance(Duration::from_millis(550)).await;
    settle().await;
    assert_eq!(lag(&registry.render(Format::Prometheus)), 0.3);
    // on time: back to 0
    tokio::time::sleep(Duration::from_millis(600)).await;
    settle().await;
    assert_eq!(lag(&registry.render(Format::Prometheus)), 0.0);
}

#[tokio::test(start_paused = true)]
async fn without_runtime_metrics_there_is_no_probe() {
    let registry = MetricsRegistry::builder().runtime_metrics(false).build();
    let text = registry.render(Format::Prometheus);
    assert!(
        !text.contains("tokio_runtime_scheduling_delay_seconds"),
        "{text}"
    );
}
