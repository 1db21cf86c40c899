//! The binary: `--print-default-config`, `--check`, SIGHUP reloads and SIGTERM's graceful
//! shutdown, over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_garrison-gateway");

fn gateway() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("GARRISON_LISTEN")
        .env_remove("GARRISON_CONFIG")
        .env_remove("GARRISON_ADMIN_TOKEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    c
}

#[test]
fn the_default_config_is_printed_and_passes_its_own_check() {
    let out = gateway().arg("--print-default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, garrison_gateway::DEFAULT_CONFIG);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let out = gateway()
        .arg("--check")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 upstreams, 3 routes)"));
}

#[test]
fn check_reports_every_problem_with_its_path_and_exits_2() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "[gateway]\nlisten = \"nope\"\n[gateway.routes.a]\nprefix = \"/a\"\nupstream = \"missing\"\n[ratelimit]\nheaders = \"some\"\n",
    )
    .unwrap();
    let out = gateway()
        .arg("--check")
        .arg("-c")
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "gateway.listen",
        "gateway.routes.a.upstream",
        "ratelimit.headers",
        "3 problems",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    let out = gateway()
        .arg("--check")
        .arg("-c")
        .arg("/does/not/exist.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /does/not/exist.toml"));
}

#[test]
fn ops_rules_writes_the_prometheus_rules_of_the_files_slos() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = "[ops]\nselector = 'job=\"edge\"'\navailability_objective = 0.995\n[ops.routes.\"/pay\"]\nlatency_objective = 0.9\n";
    std::fs::write(file.path(), text).unwrap();
    let out = gateway()
        .args(["ops", "rules", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let config = garrison_gateway::GatewayConfig::from_toml(text).unwrap();
    assert_eq!(printed, garrison::ops::rules(&config.garrison));
    assert!(printed.contains(r#"{job="edge""#), "{printed}");
    assert!(
        printed.contains("99.5% of requests without a 5xx"),
        "{printed}"
    );
    assert!(
        printed.contains(r#"job_route:slo_latency_errors:ratio_rate1h{http_route="/pay"}"#),
        "{printed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("rules.yml");
    let out = gateway()
        .args(["--config"])
        .arg(file.path())
        .args(["ops", "rules", "-o"])
        .arg(&written)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&written).unwrap(), printed);

    // a bad [ops] value is refused like any other key
    std::fs::write(file.path(), "[ops]\nlatency_threshold = \"300ms\"\n").unwrap();
    let out = gateway()
        .args(["ops", "rules", "-c"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ops.latency_threshold"));
}

/// The gateway process, killed when dropped.
struct Running {
    child: Child,
    main: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `config` and reads the two addresses it prints first.
fn start(config: &std::path::Path) -> Running {
    start_with(config, None)
}

/// [`start`], writing `stdin` to the process's standard input first.
fn start_with(config: &std::path::Path, stdin: Option<&str>) -> Running {
    let mut child = gateway()
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr_in = |what: &str| -> SocketAddr {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains(what) {
                let at = line.find("http://").unwrap() + "http://".len();
                let rest = &line[at..];
                let end = rest.find(['/', ' ']).unwrap_or(rest.len());
                return rest[..end].parse().unwrap();
            }
        }
        panic!("the gateway never printed `{what}`");
    };
    let main = addr_in("gateway listening on");
    let admin = addr_in("admin API on");
    // drain the rest of the log so the process never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    Running { child, main, admin }
}

/// One HTTP/1.1 request over a fresh connection: (status, head, body).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn config(limit: u32) -> String {
    format!(
        r#"
        [gateway]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        admin_token = "cli-test"
        shutdown_grace = "20s"
        [gateway.upstreams.demo]
        addresses = ["builtin:demo"]
        [gateway.routes.all]
        prefix = "/"
        upstream = "demo"
        [ratelimit.policies.general]
        limit = {limit}
        period = "1m"
        "#
    )
}

/// A configuration that can be read only once (a pipe: `--config <(…)`, `/dev/stdin`) is
/// what the gateway serves.
#[test]
fn a_configuration_from_a_pipe_is_read_once_and_served() {
    let gw = start_with(std::path::Path::new("/dev/stdin"), Some(&config(1234)));
    let (status, head, _) = request(gw.main, "GET", "/items/1", "");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-ratelimit-limit: 1234"),
        "{head}"
    );
}

/// Sends `sig` (`HUP`, `TERM`) with the `kill` command: the workspace forbids unsafe code.
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {sig} {}", child.id());
}

#[test]
fn sighup_reloads_the_file_and_sigterm_finishes_requests_in_flight() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config(1000)).unwrap();
    let mut gw = start(file.path());
    let (status, head, _) = request(gw.main, "GET", "/items/1", "");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-ratelimit-limit: 1000"),
        "{head}"
    );

    std::fs::write(file.path(), config(2000)).unwrap();
    signal(&gw.child, "HUP");
    let mut reloaded = false;
    for _ in 0..400 {
        let (_, head, _) = request(gw.main, "GET", "/items/1", "");
        if head
            .to_ascii_lowercase()
            .contains("x-ratelimit-limit: 2000")
        {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reloaded, "SIGHUP applied the new file");

    // an invalid file: SIGHUP changes nothing, the gateway keeps serving
    std::fs::write(file.path(), "[gateway]\nlisten = 5\n").unwrap();
    signal(&gw.child, "HUP");
    let (_, body_admin) = {
        let (s, _, b) = request(
            gw.admin,
            "GET",
            "/admin",
            "Authorization: Bearer cli-test\r\n",
        );
        (s, b)
    };
    assert!(body_admin.contains("\"generation\":2"), "{body_admin}");

    // a request in flight when SIGTERM arrives still gets its whole response
    let main = gw.main;
    let slow = std::thread::spawn(move || request(main, "GET", "/slow?ms=1500", ""));
    // it is in flight once the upstream holds it; the admin API's metrics show it active
    let in_flight = (0..400).any(|_| {
        let (_, _, m) = request(gw.admin, "GET", "/metrics", "");
        let active = m
            .lines()
            .any(|l| l.starts_with("http_server_active_requests{") && !l.ends_with(" 0"));
        if !active {
            std::thread::sleep(Duration::from_millis(5));
        }
        active
    });
    assert!(in_flight, "the slow request never showed as active");
    signal(&gw.child, "TERM");
    let (status, _, body) = slow.join().unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"slept_ms":1500}"#));
    let code = gw.child.wait().unwrap();
    assert!(code.success(), "exit status {code:?}");
    assert!(
        TcpStream::connect(gw.main).is_err(),
        "the listener is closed"
    );
}

/// Starts the binary on `config` with JSON logs (and `runtime_dir` for the files it
/// writes): the process and its log lines.
fn start_json(
    config: &std::path::Path,
    runtime_dir: &std::path::Path,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = gateway()
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Without a chosen token, the gateway makes one from the OS's random source and writes it
/// to a file only its user can read, whose path (never the token) is logged, as JSON too.
#[test]
fn a_random_admin_token_is_written_to_a_private_file_never_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, config(100).replace("admin_token = \"cli-test\"", "")).unwrap();
    let (mut child, mut lines) = start_json(&path, dir.path());
    let line = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("admin API on"))
        .expect("the admin API's line");
    std::thread::spawn(move || for _ in lines {});
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let field = |k: &str| {
        v.get(k)
            .or_else(|| v["fields"].get(k))
            .and_then(|f| f.as_str())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_owned()
    };
    let file = field("token_file");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!line.contains(&token), "the token is in the log: {line}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let admin: SocketAddr = field("address").parse().unwrap();
    let (status, _, _) = request(admin, "GET", "/admin/breakers", "");
    assert_eq!(status, 401);
    let (status, _, _) = request(
        admin,
        "GET",
        "/admin/breakers",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// The gateway's JSON log lines redact what `[trace]` names: a parameter of the file's own,
/// and personal data by pattern, in the access log's path.
#[test]
fn json_logs_redact_what_the_trace_section_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    let text = config(100).replace(
        "[gateway.upstreams.demo]",
        "[trace]\naccess_log = true\nredact_params = [\"session\"]\nredact_patterns = [\"email\"]\n[gateway.upstreams.demo]",
    );
    std::fs::write(&path, text).unwrap();
    let (mut child, mut lines) = start_json(&path, dir.path());
    let listening = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("gateway listening on"))
        .expect("the listening line");
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let main: SocketAddr = v["address"].as_str().unwrap().parse().unwrap();
    let (status, _, _) = request(
        main,
        "GET",
        "/items/1?session=s3cret&to=ada@example.com&page=2",
        "",
    );
    assert_eq!(status, 200);
    let access = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("garrison_trace::access"))
        .expect("the access log line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !access.contains("s3cret") && !access.contains("ada@example.com"),
        "{access}"
    );
    assert!(
        access.contains("session=[redacted]") && access.contains("to=[redacted]&page=2"),
        "{access}"
    );
}
