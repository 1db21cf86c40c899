//! Helpers for the tests of Garrison's crates (feature `test-util`).

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The `tracing` events of one crate logged on this thread while it lives, one line each:
/// `LEVEL field=value field=value`, the message as `message=...`.
///
/// The first capture of a process installs a global subscriber that hands each event to the
/// capture of the thread that logged it: a scoped (thread-local) subscriber alone misses
/// events whose call site another test's thread reached first, with no subscriber, and
/// cached as disabled. Where another global subscriber is set already, a scoped one is used.
///
/// ```
/// let logs = garrison_core::testing::LogCapture::start("doc");
/// tracing::warn!(target: "doc", policy = "auth", "refused");
/// assert_eq!(logs.lines(), ["WARN message=refused policy=auth"]);
/// ```
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
    _scoped: Option<tracing::subscriber::DefaultGuard>,
}

impl fmt::Debug for LogCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogCapture")
            .field("lines", &self.lines())
            .finish()
    }
}

type Sink = (&'static str, Arc<Mutex<Vec<String>>>);

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

impl LogCapture {
    /// Captures the events whose target starts with `target` (a crate's name, in snake
    /// case) logged on this thread, until dropped.
    pub fn start(target: &'static str) -> Self {
        static GLOBAL: OnceLock<bool> = OnceLock::new();
        let global = *GLOBAL.get_or_init(|| {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Collect))
                .is_ok()
        });
        let scoped = (!global).then(|| {
            tracing::subscriber::set_default(tracing_subscriber::registry().with(Collect))
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        SINK.with(|s| *s.borrow_mut() = Some((target, lines.clone())));
        Self {
            lines,
            _scoped: scoped,
        }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

struct Collect;

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
        SINK.with(|s| {
            let Some((target, lines)) = &*s.borrow() else {
                return;
            };
            if event.metadata().target().starts_with(target) {
                let mut line = Line(event.metadata().level().to_string());
                event.record(&mut line);
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line.0);
            }
        });
    }
}
