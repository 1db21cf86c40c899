//! The Redis store against real Redis servers: the shared one from `GARRISON_TEST_REDIS_URL`,
//! and private ones this test starts, stops and restarts itself.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{Format, MetricsRegistry};
use garrison_ratelimit::{FailMode, PeerAddr, Policy, RateLimitLayer, RedisStore};
use http::{Request, StatusCode};
use tower::ServiceExt;

fn redis_url() -> String {
    std::env::var("GARRISON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Fails loudly when the shared Redis does not answer.
async fn require_redis(url: &str) {
    let client = redis::Client::open(url).expect("GARRISON_TEST_REDIS_URL parses");
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    })
    .await;
    match result {
        Ok(Ok(_)) => {}
        other => panic!(
            "Redis at {url} (GARRISON_TEST_REDIS_URL) does not answer: {other:?}; start it with `just services`"
        ),
    }
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("garrison-test:{test}:{}:{nanos}", std::process::id())
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/items", get(|| async { "items" }))
        .layer(layer)
}

async fn status(app: &Router) -> StatusCode {
    let mut r = Request::get("/items").body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(PeerAddr("192.0.2.1:1000".parse::<SocketAddr>().unwrap()));
    app.clone().oneshot(r).await.unwrap().status()
}

fn layer(store: RedisStore, policy: Policy, registry: Option<&MetricsRegistry>) -> RateLimitLayer {
    let mut b = RateLimitLayer::builder().policy(policy).store(store);
    if let Some(r) = registry {
        b = b.metrics(r);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_redis_share_one_limit() {
    let url = redis_url();
    require_redis(&url).await;
    let prefix = unique_prefix("shared");
    let store = || {
        RedisStore::new(&url)
            .unwrap()
            .key_prefix(&prefix)
            .lease_fraction(0.0)
            .timeout(Duration::from_secs(2))
    };
    // Two "gateways": separate layers, separate connections, one Redis.
    let a = app(layer(store(), Policy::per_hour("shared", 20), None));
    let b = app(layer(store(), Policy::per_hour("shared", 20), None));
    let mut allowed = 0;
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        if status(app).await == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 20,
        "two replicas admit the policy's limit, not twice it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_the_shared_limit_within_five_percent_with_fewer_round_trips() {
    let url = redis_url();
    require_redis(&url).await;
    let prefix = unique_prefix("leases");
    let registry = MetricsRegistry::new();
    let store = || {
        RedisStore::new(&url)
            .unwrap()
            .key_prefix(&prefix)
            .timeout(Duration::from_secs(2))
    };
    let policy = || Policy::per_hour("busy", 2000);
    let la = layer(store(), policy(), Some(&registry));
    let lb = layer(store(), policy(), None);
    let (a, b) = (app(la.clone()), app(lb.clone()));
    let mut allowed = 0u32;
    for i in 0..3000 {
        let app = if (i / 7) % 2 == 0 { &a } else { &b };
        if status(app).await == StatusCode::OK {
            allowed += 1;
        }
    }
    // At most the burst plus what came back during the run (2000 an hour).
    assert!(
        (1900..=2002).contains(&allowed),
        "admitted {allowed}, the limit is 2000 ±5%"
    );
    let calls: u64 = [&la, &lb]
        .iter()
        .map(|l| {
            let (ok, _, _, _) = redis_store_stats(l);
            ok
        })
        .sum();
    let hits: u64 = [&la, &lb].iter().map(|l| redis_store_stats(l).3).sum();
    eprintln!(
        "leases: {allowed} of 3000 admitted (limit 2000), {calls} round trips, {hits} lease hits"
    );
    assert!(hits > 0, "no request was served from a lease");
    assert!(
        calls < 3000 / 20,
        "{calls} round trips for 3000 requests: leases save nothing"
    );
    let scrape = registry.render(Format::Prometheus);
    assert!(scrape.contains("garrison_ratelimit_store_available{store=\"redis\"} 1"));
    assert!(scrape.contains("garrison_ratelimit_store_lease_hits_total{store=\"redis\"}"));
}

fn redis_store_stats(l: &RateLimitLayer) -> (u64, u64, u64, u64) {
    l.limiter().redis_store().expect("a Redis store").stats()
}

/// A private redis-server on a free port, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with `just services`")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends requests until `done` holds, at most for 15 s (a deadline, not a timing claim).
async fn until(app: &Router, mut done: impl FnMut() -> bool) -> Vec<StatusCode> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached; saw {seen:?}"
        );
        seen.push(status(app).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_falls_back_to_memory_and_coming_back_is_picked_up() {
    let port = free_port();
    let mut server = PrivateRedis::start(port);
    let registry = MetricsRegistry::new();
    let store = RedisStore::new(&server.url())
        .unwrap()
        .lease_fraction(0.0)
        .timeout(Duration::from_millis(200))
        .retry_interval(Duration::from_millis(100));
    let l = layer(
        store,
        Policy::per_minute("general", 100_000),
        Some(&registry),
    );
    let app = app(l.clone());
    let redis = l.limiter().redis_store().unwrap().clone();

    for _ in 0..5 {
        assert_eq!(status(&app).await, StatusCode::OK);
    }
    assert!(redis.is_available());
    let (ok_before, _, _, _) = redis.stats();
    assert_eq!(ok_before, 5);

    server.kill();
    // Requests keep flowing through the fallback while Redis is gone.
    let seen = until(&app, || !redis.is_available()).await;
    for _ in 0..20 {
        assert_eq!(status(&app).await, StatusCode::OK);
    }
    assert!(seen.iter().all(|s| *s == StatusCode::OK), "{seen:?}");
    let (_, errors, fallbacks, _) = redis.stats();
    assert!(
        errors >= 1 && fallbacks >= 20,
        "errors {errors}, fallbacks {fallbacks}"
    );
    let scrape = registry.render(Format::Prometheus);
    assert!(
        scrape.contains("garrison_ratelimit_store_available{store=\"redis\"} 0"),
        "{scrape}"
    );

    // Redis comes back on the same port: the store returns to it by itself.
    let _server = PrivateRedis::start(port);
    let seen = until(&app, || redis.is_available()).await;
    assert!(seen.iter().all(|s| *s == StatusCode::OK), "{seen:?}");
    let (ok_after, _, _, _) = redis.stats();
    assert_eq!(status(&app).await, StatusCode::OK);
    assert!(redis.stats().0 > ok_after, "decisions went back to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_down() {
    let port = free_port();
    let mut server = PrivateRedis::start(port);
    let store = RedisStore::new(&server.url())
        .unwrap()
        .fail_mode(FailMode::Closed)
        .lease_fraction(0.0)
        .timeout(Duration::from_millis(200))
        .retry_interval(Duration::from_secs(2));
    let l = layer(store, Policy::per_minute("general", 100_000), None);
    let app = app(l.clone());
    assert_eq!(status(&app).await, StatusCode::OK);
    server.kill();
    let mut r = Request::get("/items").body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(PeerAddr("192.0.2.1:1000".parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(
        l.limiter().decisions("general"),
        Some((1, 0, 0)),
        "the refusal is counted as unavailable, not as a limit"
    );
}

#[tokio::test]
async fn a_redis_url_that_does_not_parse_is_a_clear_error() {
    let e = RedisStore::new("not a url").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("rate limit: the Redis URL does not parse"),
        "{e}"
    );
}

/// A private Redis Cluster of three masters on free ports, each node a [`PrivateRedis`] that
/// keeps its cluster identity (its `nodes.conf`) across a restart.
struct PrivateCluster {
    dir: std::path::PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
}

impl PrivateCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "garrison-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut c = Self {
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..3 {
            let port = free_port();
            let child = c.spawn(port);
            c.nodes.push((port, Some(child)));
        }
        let addrs: Vec<String> = c
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it with `just services`")
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok();
        c
    }

    fn spawn(&self, port: u16) -> Child {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-node-timeout", "1000"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e})"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Waits (at most 20 s: a deadline, not a timing claim) for `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.nodes.iter().all(|(port, _)| {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        let port = self.nodes[i].0;
        let child = self.spawn(port);
        self.nodes[i].1 = Some(child);
        self.wait_ok();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` requests of client `ip` to `app`, by status.
async fn statuses(app: &Router, ip: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut r = Request::get("/items").body(Body::empty()).unwrap();
        r.extensions_mut().insert(PeerAddr(
            format!("{ip}:1000").parse::<SocketAddr>().unwrap(),
        ));
        out.push(app.clone().oneshot(r).await.unwrap().status());
    }
    out
}

/// Forty clients (`{net}.0` to `{net}.39`, over every node's slots) under a limit of 3: two
/// requests through `a` and two through `b` admit three in all, as one limit does.
async fn limit_is_shared(a: &Router, b: &Router, net: &str, when: &str) {
    for k in 0..40 {
        let ip = format!("{net}.{k}");
        let mut s = statuses(a, &ip, 2).await;
        s.extend(statuses(b, &ip, 2).await);
        assert_eq!(
            s,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ],
            "{ip}{when}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load_falls_back_and_its_return_is_exact_again() {
    let mut cluster = PrivateCluster::start();
    let store = || {
        RedisStore::new(&cluster.url())
            .unwrap()
            .lease_fraction(0.0)
            .timeout(Duration::from_millis(300))
            .retry_interval(Duration::from_millis(200))
    };
    // two replicas, 3 requests an hour per client
    let (la, lb) = (
        layer(store(), Policy::per_hour("general", 3), None),
        layer(store(), Policy::per_hour("general", 3), None),
    );
    let (a, b) = (app(la.clone()), app(lb.clone()));
    // forty clients over every node's slots: the limit is shared while all nodes answer
    limit_is_shared(&a, &b, "198.51.100", "").await;
    // a master dies: every request still gets an answer of the limiter (fallback in memory
    // for the keys of its slots), none fails otherwise
    cluster.kill(2);
    for k in 0..40 {
        for s in statuses(&a, &format!("203.0.113.{k}"), 2).await {
            assert!(
                s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS,
                "{s}"
            );
        }
    }
    let redis = la.limiter().redis_store().unwrap().clone();
    let (_, errors, fallbacks, _) = redis.stats();
    assert!(
        errors >= 1 && fallbacks >= 1,
        "errors {errors}, fallbacks {fallbacks}"
    );
    // it comes back with its slots: each replica's next probe (one per retry interval)
    // finds it, and the limit is one again
    cluster.restart(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    for (app, l) in [(&a, &la), (&b, &lb)] {
        let store = l.limiter().redis_store().unwrap().clone();
        loop {
            // every client of the dead node's slots, so that one of them probes it
            for k in 0..40 {
                statuses(app, &format!("203.0.113.{k}"), 1).await;
            }
            let (_, errors, _, _) = store.stats();
            let (ok, errors_after, _, _) = {
                statuses(app, "203.0.113.250", 1).await;
                store.stats()
            };
            if store.is_available() && errors_after == errors && ok > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never came back to the cluster"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    limit_is_shared(&a, &b, "192.0.2", " after the node came back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_cut_off_by_the_timeout_and_picked_up_again() {
    let port = free_port();
    let server = PrivateRedis::start(port);
    let store = RedisStore::new(&server.url())
        .unwrap()
        .lease_fraction(0.0)
        .timeout(Duration::from_millis(200))
        .retry_interval(Duration::from_millis(100));
    let l = layer(store, Policy::per_minute("general", 100_000), None);
    let app = app(l.clone());
    let redis = l.limiter().redis_store().unwrap().clone();
    assert_eq!(status(&app).await, StatusCode::OK);
    let pid = server.child.as_ref().unwrap().id().to_string();
    // the process is paused: connections stay open, nothing answers (a Redis in a long
    // command, or a host that hangs)
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let seen = until(&app, || !redis.is_available()).await;
    assert!(seen.iter().all(|s| *s == StatusCode::OK), "{seen:?}");
    for _ in 0..10 {
        assert_eq!(status(&app).await, StatusCode::OK);
    }
    let (_, errors, fallbacks, _) = redis.stats();
    assert!(
        errors >= 1 && fallbacks >= 10,
        "errors {errors}, fallbacks {fallbacks}"
    );
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let seen = until(&app, || redis.is_available()).await;
    assert!(seen.iter().all(|s| *s == StatusCode::OK), "{seen:?}");
    drop(server);
}
