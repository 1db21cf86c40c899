//! Helpers for the tests of Garrison's crates (feature `test-util`).

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The `tracing` events of one crate logged on this thread while it lives, one line each:
/// `LEVEL field=value field=value`, the message as `message=...`.
///
/// ```
/// let logs = garrison_core::testing::LogCapture::start("doc");
/// tracing::warn!(target: "doc", policy = "auth", "refused");
/// assert_eq!(logs.lines(), ["WARN message=refused policy=auth"]);
/// ```
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogCapture")
            .field("lines", &self.lines())
            .finish()
    }
}

impl LogCapture {
    /// Captures the events whose target starts with `target` (a crate's name, in snake
    /// case), until dropped.
    pub fn start(target: &'static str) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collect = Collect {
            target,
            lines: lines.clone(),
        };
        let subscriber = tracing_subscriber::registry().with(collect);
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Collect {
    target: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target().starts_with(self.target) {
            let mut line = Line(event.metadata().level().to_string());
            event.record(&mut line);
            self.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.0);
        }
    }
}
