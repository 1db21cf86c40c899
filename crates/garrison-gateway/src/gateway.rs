//! [`Gateway`]: the configuration in force (a generation), reloads and shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison::config::{ConfigError, ConfigIssue};
use garrison::garrison_core::SharedClock;
use garrison::garrison_health::CheckOptions;
use garrison::{Garrison, GarrisonService, Maintenance};
use parking_lot::RwLock;
use tokio::sync::{watch, OnceCell};
use tower::Layer;

use crate::config::{GatewayConfig, DEMO_ADDRESS};
use crate::metrics::{GatewayCollector, TunnelStats, UpstreamsCheck};
use crate::proxy::Proxy;
use crate::upstream::Upstream;

/// The proxy behind the whole garrison stack.
pub type GatewayService = GarrisonService<Proxy>;

/// One configuration in force: made whole before it replaces the previous one, so that a
/// reload never serves a half-built stack.
#[derive(Debug)]
pub struct Generation {
    pub(crate) number: u64,
    pub(crate) config: GatewayConfig,
    pub(crate) garrison: Garrison,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    pub(crate) service: GatewayService,
}

impl Generation {
    /// 1 for the configuration the gateway started with, one more at each reload.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The garrison stack: its registries (metrics, health, breakers, rate limiter).
    pub fn garrison(&self) -> &Garrison {
        &self.garrison
    }

    /// The upstreams by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.upstreams
    }
}

/// Where the configuration comes from, for reloads.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Given,
}

/// A running gateway: the configuration in force, reloads, and shutdown. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use garrison_gateway::{Gateway, GatewayConfig};
///
/// let gateway = Gateway::new(GatewayConfig::default()).await?;
/// let (main, admin) = gateway.bind().await?;
/// let stop = gateway.clone();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// gateway.serve(main, admin).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    source: Source,
    pub(crate) current: RwLock<Arc<Generation>>,
    pub(crate) factory: Factory,
    /// The admin API's bearer token: replaced when a reload brings another one.
    admin_token: RwLock<Arc<str>>,
    pub(crate) shutdown: watch::Sender<bool>,
    reloads: tokio::sync::Mutex<()>,
}

/// Makes generations: what stays from one to the next.
#[derive(Debug)]
pub(crate) struct Factory {
    /// Generations made so far (the number of the newest).
    pub(crate) number: AtomicU64,
    /// Worker threads (each generation makes one upstream pool per worker).
    pub(crate) workers: usize,
    demo: OnceCell<SocketAddr>,
    clock: SharedClock,
    /// Tunnels outlive generations: counted once for the gateway.
    tunnels: Arc<TunnelStats>,
    /// So does the maintenance switch: a reload does not end maintenance.
    maintenance: Maintenance,
}

fn issue(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(vec![ConfigIssue {
        path: path.into(),
        message: message.into(),
    }])
}

impl Gateway {
    /// A gateway of `config` (it cannot reload: there is no file to read again). Starts the
    /// demo upstream when an upstream names [`DEMO_ADDRESS`], and the background tasks of
    /// the stack, so it must run inside a tokio runtime.
    pub async fn new(config: GatewayConfig) -> Result<Self, ConfigError> {
        Self::start(config, Source::Given, SharedClock::system()).await
    }

    /// A gateway of the configuration file `path`, which [`reload`](Self::reload) (and
    /// SIGHUP, in the binary) reads again.
    pub async fn from_file(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let config = GatewayConfig::from_file(&path)?;
        Self::with_file(config, path).await
    }

    /// A gateway of `config`, already read from `path`, which [`reload`](Self::reload) reads
    /// again (the binary reads its file once at start, so that a pipe such as
    /// `--config <(…)` or `/dev/stdin` works).
    pub async fn with_file(
        config: GatewayConfig,
        path: impl Into<PathBuf>,
    ) -> Result<Self, ConfigError> {
        Self::start(config, Source::File(path.into()), SharedClock::system()).await
    }

    /// A gateway whose layers and upstreams read time from `clock` (tests).
    pub async fn with_clock(
        config: GatewayConfig,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        Self::start(config, Source::Given, clock).await
    }

    async fn start(
        config: GatewayConfig,
        source: Source,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        let admin_token = if !config.gateway.admin_token.is_empty() {
            config.gateway.admin_token.clone()
        } else if let Some(t) = std::env::var("GARRISON_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            t
        } else {
            random_token()
        };
        let (shutdown, _) = watch::channel(false);
        let workers = match config.gateway.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let factory = Factory {
            number: AtomicU64::new(0),
            workers,
            demo: OnceCell::new(),
            clock,
            tunnels: Arc::default(),
            maintenance: Maintenance::new(),
        };
        let first = factory.build(config).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                source,
                current: RwLock::new(Arc::new(first)),
                factory,
                admin_token: RwLock::new(admin_token.into()),
                shutdown,
                reloads: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.shared.current.read().clone()
    }

    /// The bearer token of the admin API now (a reload with another `admin_token` replaces
    /// it: the old one is refused from the next request).
    pub fn admin_token(&self) -> Arc<str> {
        self.shared.admin_token.read().clone()
    }

    /// Reads the configuration file again and, when it is valid, serves it from the next
    /// request on (connections stay open; requests in flight finish under the old one).
    /// An invalid file changes nothing: its problems come back, every one with its path.
    /// Breakers, rate-limit buckets kept in memory and metrics start afresh in the new
    /// stack (Prometheus' `rate()` reads the counters' restart as a reset).
    pub async fn reload(&self) -> Result<u64, ConfigError> {
        let Source::File(path) = &self.shared.source else {
            return Err(issue(
                "",
                "no configuration file to read again: the gateway started without --config",
            ));
        };
        let config = GatewayConfig::from_file(path)?;
        self.reload_with(config).await
    }

    /// Serves `config` from the next request on (see [`reload`](Self::reload)).
    pub async fn reload_with(&self, config: GatewayConfig) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.shared.reloads.lock().await;
        let old = self.current();
        let gen = self.shared.factory.build(config).await?;
        let (a, b) = (&old.config.gateway, &gen.config.gateway);
        if a.listen != b.listen || a.admin_listen != b.admin_listen {
            tracing::warn!("listen addresses changed in the file: they apply at the next start");
        }
        let number = gen.number;
        let token = &gen.config.gateway.admin_token;
        if !token.is_empty() && **self.shared.admin_token.read() != **token {
            *self.shared.admin_token.write() = token.as_str().into();
            tracing::info!("admin token replaced: the old one is refused from now on");
        }
        *self.shared.current.write() = Arc::new(gen);
        tracing::info!(generation = number, "configuration reloaded");
        Ok(number)
    }

    /// Starts a graceful shutdown: readiness fails at once, the listeners stop accepting,
    /// requests in flight finish (for `shutdown_grace` at most), spans are flushed; then
    /// [`serve`](Self::serve) returns.
    pub fn shutdown(&self) {
        self.current().garrison.begin_shutdown();
        self.shared.shutdown.send_replace(true);
    }
}

impl Factory {
    async fn build(&self, config: GatewayConfig) -> Result<Generation, ConfigError> {
        let mut upstreams = BTreeMap::new();
        for (name, u) in &config.gateway.upstreams {
            let mut authorities = Vec::with_capacity(u.addresses.len());
            for a in &u.addresses {
                if a == DEMO_ADDRESS {
                    let addr = self
                        .demo
                        .get_or_try_init(crate::demo::start)
                        .await
                        .map_err(|e| {
                            issue(
                                &format!("gateway.upstreams.{name}.addresses"),
                                format!("the demo upstream did not start: {e}"),
                            )
                        })?;
                    authorities.push(
                        addr.to_string()
                            .parse()
                            .expect("an address is an authority"),
                    );
                } else {
                    authorities.push(crate::config::authority(a).expect("validated"));
                }
            }
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(name, u, authorities, self.clock.clone())),
            );
        }
        let mut stack = config.stack_config();
        // no handler of the user's runs inside the gateway: nothing reads the context
        stack.trace.otel_context = false;
        // at the edge, a client's traceparent must not decide what is recorded
        stack.trace.sampled_from = garrison::config::SampledFrom::TrustedProxies;
        if config.gateway.observability == crate::config::Observability::Admin {
            stack.health.enabled = false;
        }
        let garrison = Garrison::builder()
            .config(stack)
            .clock(self.clock.clone())
            .maintenance(self.maintenance.clone())
            .build()?;
        garrison
            .metrics()
            .register_collector(Arc::new(GatewayCollector {
                upstreams: upstreams.clone(),
                tunnels: self.tunnels.clone(),
            }));
        if !upstreams.is_empty() {
            // read from the addresses' own state: cheap enough to look every second
            garrison
                .health()
                .register(
                    "gateway-upstreams",
                    UpstreamsCheck {
                        upstreams: upstreams.clone(),
                    },
                    CheckOptions::deep()
                        .critical(false)
                        .interval(Duration::from_secs(1)),
                )
                .map_err(|e| issue("health.checks.gateway-upstreams", e.to_string()))?;
        }
        let proxy = Proxy::new(&config, &upstreams, self.workers, self.tunnels.clone());
        let number = self.number.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Generation {
            number,
            service: garrison.layer().layer(proxy),
            config,
            garrison,
            upstreams,
        })
    }
}

/// 32 bytes of the operating system's CSPRNG, in hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        // no entropy source at all: refuse to guess one
        panic!("the operating system's random source failed: {e}");
    }
    let mut out = [0u8; 64];
    garrison::garrison_core::hex_encode(&bytes, &mut out).to_owned()
}
