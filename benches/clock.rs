//! What one timed request pays for its clock: a reading at the start and one at the end,
//! subtracted, side by side in one run: `std::time::Instant` (what the layers read before
//! `Tick`) and `SharedClock::tick` (the system clock's `Tick`, from the CPU's counter where the
//! kernel keeps time with it, else from the monotonic clock).
//!
//! ```text
//! cargo bench -p garrison-workspace --bench clock
//! ```

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use garrison_core::SharedClock;

fn benches(c: &mut Criterion) {
    let clock = SharedClock::system();
    let mut g = c.benchmark_group("clock_start_and_end");
    g.bench_function("std_instant", |b| {
        b.iter(|| {
            let start = black_box(Instant::now());
            black_box(Instant::now().saturating_duration_since(start))
        })
    });
    g.bench_function("garrison_tick", |b| {
        b.iter(|| {
            let start = black_box(clock.tick());
            black_box(clock.tick().saturating_since(start))
        })
    });
    g.finish();
}

criterion_group!(clock, benches);
criterion_main!(clock);
