//! Reading `GarrisonConfig` from TOML: values, defaults, and every bad key reported at once.

use std::time::Duration;

use garrison::config::{CheckType, KeyConfig, ProbeKind, SamplerKind, WindowConfig};
use garrison::{Garrison, GarrisonConfig};

fn problems(toml: &str) -> Vec<String> {
    GarrisonConfig::from_toml(toml)
        .unwrap_err()
        .issues()
        .iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect()
}

#[test]
fn values_are_read_and_unset_keys_keep_their_defaults() {
    let c = GarrisonConfig::from_toml(
        r#"
        [service]
        name = "shop"
        routes = ["/users/{id}"]

        [trace]
        sampler = "error_biased"
        ratio = 0.25
        slow = "750ms"

        [ratelimit]
        key = "header:x-api-key"
        trusted_proxies = ["10.0.0.0/8"]

        [ratelimit.policies.search]
        limit = 20
        period = "1s"
        burst = 40

        [ratelimit.policies.auth]
        period = "30m"

        [ratelimit.routes]
        "/auth/login" = "auth"
        "/search" = "search"

        [breaker]
        profile = "critical"

        [breaker.profiles.payments]
        base = "database"
        window = "50 calls"
        failure_rate = 0.25

        [breaker.routes]
        "/pay/{id}" = "payments"

        [health.checks.upstream]
        type = "http"
        url = "http://127.0.0.1:9/health"
        probe = "deep"
        critical = false
        interval = "1m"
    "#,
    )
    .unwrap();
    assert_eq!(c.service.name, "shop");
    assert_eq!(c.trace.sampler, SamplerKind::ErrorBiased);
    assert_eq!(c.trace.slow, Duration::from_millis(750));
    assert_eq!(c.trace.request_id_header, "x-request-id");
    assert_eq!(c.ratelimit.key, KeyConfig::Header("x-api-key".into()));
    let search = &c.ratelimit.policies["search"];
    assert_eq!((search.limit, search.burst), (20, Some(40)));
    // a built-in policy changed in one key keeps the others
    let auth = &c.ratelimit.policies["auth"];
    assert_eq!((auth.limit, auth.period), (5, Duration::from_secs(1800)));
    assert_eq!(
        c.ratelimit.policies.len(),
        5,
        "four built in, one of the file"
    );
    assert_eq!(c.ratelimit.routes["/auth/login"], "auth");
    let pay = &c.breaker.profiles["payments"];
    assert_eq!(pay.window, Some(WindowConfig::Calls(50)));
    assert_eq!(pay.minimum_calls, None);
    let check = &c.health.checks["upstream"];
    assert_eq!(check.kind, CheckType::Http);
    assert_eq!(check.probe, ProbeKind::Deep);
    assert!(!check.critical);
    assert_eq!(check.interval, Duration::from_secs(60));
    assert_eq!(check.timeout, Duration::from_secs(2));
    Garrison::from_config(c).unwrap();
}

#[test]
fn every_bad_key_is_reported_at_once_with_its_path() {
    let found = problems(
        r#"
        colour = "blue"

        [trace]
        ratio = 1.5
        sampler = "sometimes"
        request_id_header = "bad header"

        [metrics]
        path = 7
        duration_buckets = [0.5, 0.1]

        [health]
        ready_path = "/metrics"

        [ratelimit]
        default_policy = "gold"
        sweep_interval = "soon"
        ipv6_prefix = 200
        trusted_proxies = ["10.0.0.0/99"]

        [ratelimit.policies.auth]
        limit = 0

        [ratelimit.policies.fresh]
        burst = 3

        [ratelimit.policies.fine]
        limit = 1000000000
        period = "1s"

        [ratelimit.routes]
        "/login" = "nope"
        "no-slash" = "auth"

        [breaker]
        profile = "sturdy"
        max_breakers = 0

        [breaker.profiles.odd]
        failure_rate = 2.0
        windw = "10s"

        [health.checks.db]
        url = "postgres://x"
    "#,
    );
    let expected = [
        "colour: unknown key; expected one of:",
        "trace.ratio: must be between 0 and 1",
        "trace.sampler: `sometimes` is not one of \"ratio\", \"always\", \"never\", \"error_biased\"",
        "trace.request_id_header: `bad header` is not a header name",
        "metrics.path: expected a string, found integer",
        "metrics.duration_buckets: bounds must be positive, finite and strictly ascending",
        "health.ready_path: `/metrics` is already metrics.path",
        "ratelimit.default_policy: no policy `gold`; defined: auth, fine, fresh, general, heavy, upload",
        "ratelimit.sweep_interval: `soon` is not a duration",
        "ratelimit.ipv6_prefix: must be between 1 and 128",
        "ratelimit.trusted_proxies: ",
        "ratelimit.policies.auth.limit: must be > 0",
        "ratelimit.policies.fresh.limit: required for a new policy",
        "ratelimit.policies.fresh.period: required for a new policy",
        "ratelimit.policies.fine: rate-limit policy `fine`: the period must allow at least one microsecond per request",
        "ratelimit.routes.\"/login\": no policy `nope`",
        "ratelimit.routes.no-slash: route pattern `no-slash`: must start with `/`",
        "breaker.profile: no profile `sturdy`; defined: analytics, batch, critical, database, default, odd",
        "breaker.max_breakers: must be > 0",
        "breaker.profiles.odd.failure_rate: must be in (0, 1]",
        "breaker.profiles.odd.windw: unknown key; expected one of:",
        "health.checks.db.type: required: one of \"http\"",
    ];
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing `{e}` in:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    // the error's text lists them one per line
    let text = GarrisonConfig::from_toml("[ratelimit.policies.auth]\nlimit = 0\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        "invalid garrison configuration (1 problem):\n  ratelimit.policies.auth.limit: must be > 0"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let text = GarrisonConfig::from_toml("[service]\nname = \"a\"\nversion = \n")
        .unwrap_err()
        .to_string();
    assert!(text.contains("line 3"), "{text}");
}

#[test]
fn options_that_need_a_feature_say_which() {
    let found: Vec<String> = GarrisonConfig::from_toml(
        "[health.checks.cache]\ntype = \"mysql\"\nurl = \"mysql://x\"\n[ratelimit.redis]\nurl = \"redis://127.0.0.1\"\n",
    )
    .err()
    .map(|e| e.issues().iter().map(|i| format!("{}: {}", i.path, i.message)).collect())
    .unwrap_or_default();
    // `just test` also runs this crate's tests with its default features
    if cfg!(feature = "mysql") && cfg!(feature = "redis") {
        assert!(found.iter().all(|f| !f.contains("feature")), "{found:?}");
        return;
    }
    assert!(
        found
            .iter()
            .any(|f| f
                == "health.checks.cache.type: needs the `mysql` feature of the garrison crate"),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("ratelimit.redis.url: a shared store needs the `redis` feature")),
        "{found:?}"
    );
}

#[test]
fn it_deserializes_through_serde_as_a_section_of_another_file() {
    #[derive(serde::Deserialize)]
    struct App {
        #[allow(dead_code)]
        port: u16,
        garrison: GarrisonConfig,
    }
    let app: App =
        toml::from_str("port = 8080\n[garrison.ratelimit.policies.auth]\nlimit = 3\n").unwrap();
    assert_eq!(app.garrison.ratelimit.policies["auth"].limit, 3);
    let err = toml::from_str::<App>("port = 1\n[garrison.metrics]\nmax_series = 0\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("metrics.max_series: must be > 0"), "{err}");
}

#[test]
fn a_checks_warn_response_time_is_read_and_must_be_positive() {
    let c = GarrisonConfig::from_toml(
        r#"
        [health.checks.db]
        type = "http"
        url = "http://127.0.0.1:9/health"
        warn_response_time = "750ms"

        [health.checks.other]
        type = "http"
        url = "http://127.0.0.1:9/health"
        "#,
    )
    .unwrap();
    let checks = &c.health.checks;
    assert_eq!(checks["db"].warn_response_time, Duration::from_millis(750));
    assert_eq!(checks["other"].warn_response_time, Duration::from_secs(5));
    let found = problems(
        r#"
        [health.checks.db]
        type = "http"
        url = "http://127.0.0.1:9/health"
        warn_response_time = "0s"
        "#,
    );
    assert_eq!(found, ["health.checks.db.warn_response_time: must be > 0"]);
}

#[tokio::test]
async fn health_status_codes_and_names_come_from_the_file() {
    use garrison::garrison_health::Probe;
    let c = GarrisonConfig::from_toml(
        r#"
        [health]
        details = "always"
        status_names = "descriptive"
        breakers_verbose = true
        process = true

        [health.status_codes]
        warn = 206
        "#,
    )
    .unwrap();
    let g = Garrison::builder()
        .config(c)
        .check(
            "queue",
            garrison::garrison_health::check_fn(|| async {
                garrison::garrison_health::CheckResult::warn("half full")
            }),
            garrison::garrison_health::CheckOptions::readiness(),
        )
        .build()
        .unwrap();
    g.health().refresh().await;
    let resp = g.health().respond(Probe::Ready, &http::HeaderMap::new());
    assert_eq!(resp.status(), 206);
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["queue"][0]["status"], "degraded", "{body}");
    let deep = g.health().respond(Probe::Deep, &http::HeaderMap::new());
    let deep: serde_json::Value = serde_json::from_slice(deep.body()).unwrap();
    // every breaker, closed ones too, with its state
    assert_eq!(
        deep["checks"]["breakers:server"][0]["observedValue"], "closed",
        "{deep}"
    );
    let found = problems(
        r#"
        [health]
        status_names = "cheerful"

        [health.status_codes]
        fail = 99
        teapot = 418
        "#,
    );
    assert_eq!(
        found,
        [
            "health.status_names: `cheerful` is not one of \"draft\", \"descriptive\"",
            "health.status_codes.fail: must be between 200 and 599",
            "health.status_codes.teapot: unknown key; expected one of: fail, pass, warn",
        ]
    );
}

#[test]
fn rate_limit_reset_and_retry_after_options_and_the_built_in_heavy_policy_and_analytics_profile() {
    use garrison::config::ResetMode;
    let c = GarrisonConfig::from_toml(
        "[ratelimit]\nreset = \"epoch\"\nlegacy_retry_after = true\n[breaker.profiles.reports]\nbase = \"analytics\"\nfailure_count = 3\n",
    )
    .unwrap();
    assert_eq!(c.ratelimit.reset, ResetMode::Epoch);
    assert!(c.ratelimit.legacy_retry_after);
    assert_eq!(c.ratelimit.policies["heavy"].limit, 10);
    assert_eq!(
        c.ratelimit.policies["heavy"].period,
        Duration::from_secs(60)
    );
    assert_eq!(c.breaker.profiles["reports"].failure_count, Some(3));
    Garrison::from_config(c).unwrap();
    assert_eq!(
        problems("[ratelimit]\nreset = \"weekly\"\n"),
        ["ratelimit.reset: `weekly` is not one of \"delta\", \"epoch\""]
    );
}

#[test]
fn the_patient_admission_profile_sizes_the_queue_and_keys_of_the_file_still_win() {
    let c = GarrisonConfig::from_toml("[admission]\nprofile = \"patient\"\n").unwrap();
    let a = &c.admission;
    assert_eq!((a.max_in_flight, a.max_queue), (8, 200));
    assert_eq!(a.queue_timeouts.len(), 5);
    assert!(a
        .queue_timeouts
        .values()
        .all(|d| *d == Duration::from_secs(30)));

    let c = GarrisonConfig::from_toml(
        "[admission]\nprofile = \"patient\"\nmax_queue = 50\n[admission.queue_timeouts]\ncritical = \"2s\"\n",
    )
    .unwrap();
    let a = &c.admission;
    assert_eq!((a.max_in_flight, a.max_queue), (8, 50));
    assert_eq!(a.queue_timeouts["critical"], Duration::from_secs(2));
    assert_eq!(a.queue_timeouts["batch"], Duration::from_secs(30));

    let mut code = GarrisonConfig::default();
    assert!(code.admission.apply_profile("patient"));
    assert_eq!(code.admission.max_in_flight, 8);
    assert!(!code.admission.apply_profile("hasty"));
    assert_eq!(
        problems("[admission]\nprofile = \"hasty\"\n"),
        ["admission.profile: no admission profile `hasty`; built in: patient"]
    );
}

#[test]
fn redact_patterns_are_named_and_checked() {
    let c =
        GarrisonConfig::from_toml("[trace]\nredact_patterns = [\"email\", \"card\"]\n").unwrap();
    assert_eq!(
        c.trace.redaction().redact_text("to ada@example.com"),
        "to [redacted]"
    );
    assert_eq!(
        problems("[trace]\nredact_patterns = [\"email\", \"postcode\"]\n"),
        ["trace.redact_patterns[1]: `postcode` is not one of \"email\", \"phone\", \"card\""]
    );
}
