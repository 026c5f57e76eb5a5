//! Connection caps and timeouts on both listeners (`listen.*`): a flood of
//! idle connections to one listener cannot starve the other, connections
//! that stall or go quiet are closed, and HTTP/2 reset floods end with
//! GOAWAY(ENHANCE_YOUR_CALM).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config edit that puts `listen:` settings (YAML lines) first.
fn listen(lines: &'static str) -> impl FnOnce(String) -> String + Send + 'static {
    move |yaml| format!("listen:\n{}\n{yaml}", indent(lines.trim(), 2))
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(by))).collect()
}

/// Reads (and drops) whatever comes until the peer closes; how long that
/// took, or `None` if the connection is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// `/metrics` over a connection of its own (the test's timeouts are short
/// enough to close a pooled one under a reused request).
async fn metric(h: &Harness, name: &str, labels: &[&str]) -> Option<f64> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let text = client.get(h.url("/metrics")).send().await.ok()?.text().await.ok()?;
    metric_value(&text, name, labels)
}

async fn eventually_metric(h: &Harness, name: &str, labels: &[&str], want: f64) {
    let what = format!("{name}{labels:?} == {want}");
    eventually(&what, || async move { metric(h, name, labels).await == Some(want) }).await;
}

/// An ext_authz Check on a connection of its own, which must be allowed within 5s.
async fn fresh_check_is_allowed(idp: &MockIdp, grpc: SocketAddr) {
    let started = Instant::now();
    let check = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await?;
        let mut client = stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
        let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "orders.read")));
        let req = check_request(&[("authorization", &bearer)], &[("audience", "orders")], "api.test", "/");
        Ok::<_, BoxError>(client.check(req).await?.into_inner())
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .expect("a fresh gRPC Check answered within 5s")
        .expect("a fresh gRPC Check answered");
    allowed(&answer);
    assert!(started.elapsed() < Duration::from_secs(5));
}

const HTTP_CAP: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_flood_is_capped_and_grpc_keeps_answering() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(listen("http_max_connections: 20\nhandshake_timeout: 60s\nidle_timeout: 60s"))
        .start()
        .await;

    // 70 idle connections: the first 20 are held, the other 50 closed at once.
    let mut conns = Vec::new();
    for _ in 0..HTTP_CAP + 50 {
        conns.push(TcpStream::connect(h.http_addr).await.unwrap());
    }
    let watchers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = closed_within(&mut c, Duration::from_secs(2)).await;
                (c, closed)
            })
        })
        .collect();
    let mut open = Vec::new();
    let mut closed = 0;
    for w in watchers {
        match w.await.unwrap() {
            (c, None) => open.push(c),
            (_, Some(_)) => closed += 1,
        }
    }
    assert_eq!(open.len(), HTTP_CAP, "connections held by the HTTP listener");
    assert_eq!(closed, 50, "connections over the cap are closed");

    // The HTTP listener is full; a new gRPC connection is served at once.
    fresh_check_is_allowed(&idp, h.grpc_addr).await;
    // ... and a new HTTP connection is still turned away.
    let mut extra = TcpStream::connect(h.http_addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await.is_some(), "the 21st HTTP connection is closed");

    // Freed slots take new connections again; the refusals were counted
    // (with the tries to read them that came before the slots were free).
    drop(open);
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut turned_away = 0;
    let text = loop {
        match client.get(h.url("/metrics")).send().await {
            Ok(resp) => break resp.text().await.unwrap(),
            Err(_) => turned_away += 1,
        }
        assert!(turned_away < 500, "the HTTP listener never took a connection again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let refused = |listener: &str| {
        let listener = format!("listener=\"{listener}\"");
        metric_value(&text, "stsgate_connections_refused_total", &[&listener, "reason=\"limit\""])
    };
    assert_eq!(refused("http"), Some(51.0 + turned_away as f64), "{text}");
    assert_eq!(refused("grpc"), Some(0.0), "{text}");
    h.shutdown().await;
}

/// The finding itself: under a file-descriptor limit, idle HTTP connections
/// used to take every descriptor, and a fresh Check never got accepted. The
/// real binary under `ulimit -n 200` lowers its default caps to fit, so the
/// flood is cut off at the HTTP cap and Envoy's Check still goes through.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_flood_under_a_low_fd_limit_does_not_starve_grpc() {
    const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
    init_logging();
    let idp = MockIdp::start().await;
    let dir = TempDir::new("fd-limit");
    let log = dir.path().join("stderr.log");
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    // No timeout frees a descriptor while the test runs: only the caps do.
    let listen = format!("listen:\n  grpc: {grpc}\n  http: {http}\n  handshake_timeout: 5m\n");
    let config = dir.write("config.yaml", Harness::builder(&idp).edit(move |y| format!("{listen}{y}")).yaml());
    let _child = ChildGuard::spawn(
        "stsgate serve",
        Command::new("sh")
            .args(["-c", "ulimit -n 200 && exec \"$0\" \"$@\"", BIN, "serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env_remove("STSGATE_CONFIG")
            .env_remove("STSGATE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let probe = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let ready = format!("http://{http}/readyz");
    eventually("stsgate serve ready", || {
        let probe = probe.clone();
        let ready = ready.clone();
        async move { probe.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let log_text = read_log();
    assert!(log_text.contains("do not fit the file-descriptor limit"), "{log_text}");

    // More idle connections than the process has descriptors (and fewer
    // than those plus the listen backlog of 128, so that connecting never
    // stalls).
    let http_addr: SocketAddr = http.parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..300 {
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(http_addr));
        flood.push(connect.await.expect("connected within 2s").unwrap());
    }
    // Give stsgate time to accept all it will (before, that was every
    // descriptor it had); those over the cap are closed.
    let watchers: Vec<_> = flood
        .into_iter()
        .map(|mut c| tokio::spawn(async move { (closed_within(&mut c, Duration::from_millis(1500)).await, c) }))
        .collect();
    let mut held = Vec::new();
    for w in watchers {
        if let (None, c) = w.await.unwrap() {
            held.push(c);
        }
    }
    assert!(held.len() < 72, "the HTTP listener holds {} idle connections under `ulimit -n 200`", held.len());
    fresh_check_is_allowed(&idp, grpc.parse().unwrap()).await;
    eventually("the refusal is logged", || async { read_log().contains("connection limit reached") }).await;
    drop(held);
}

/// Writes `bytes`, then expects the peer to close the connection no sooner
/// than `at_least` and within `at_least + 4s`; returns when it did.
async fn expect_closed_after(stream: &mut TcpStream, at_least: Duration, what: &str) -> Duration {
    let took = closed_within(stream, at_least + Duration::from_secs(4))
        .await
        .unwrap_or_else(|| panic!("{what}: still open {:?} after the timeout", Duration::from_secs(4)));
    assert!(took >= at_least.mul_f32(0.9), "{what}: closed after {took:?}, before the {at_least:?} timeout");
    took
}

/// Sends one request on `stream` and reads its whole (small) answer.
async fn get_healthz(stream: &mut TcpStream) {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: stsgate\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_stalls_is_closed_after_header_read_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(listen("header_read_timeout: 1s\nidle_timeout: 30s\nhandshake_timeout: 30s"))
        .start()
        .await;
    let mut conn = TcpStream::connect(h.http_addr).await.unwrap();
    get_healthz(&mut conn).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: st").await.unwrap();
    expect_closed_after(&mut conn, SECOND, "half a request head").await;
    eventually_metric(&h, "stsgate_connections_closed_total", &["listener=\"http\"", "reason=\"header_timeout\""], 1.0)
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_must_send_its_first_request_within_handshake_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(listen("handshake_timeout: 1s\nheader_read_timeout: 30s\nidle_timeout: 30s"))
        .start()
        .await;
    let mut silent = TcpStream::connect(h.http_addr).await.unwrap();
    let mut partial = TcpStream::connect(h.http_addr).await.unwrap();
    partial.write_all(b"GET /healthz HT").await.unwrap();
    let mut half_preface = TcpStream::connect(h.http_addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (a, b, c) = tokio::join!(
        expect_closed_after(&mut silent, SECOND, "a connection that sends nothing"),
        expect_closed_after(&mut partial, SECOND, "half a first request"),
        expect_closed_after(&mut half_preface, SECOND, "half an HTTP/2 preface"),
    );
    eprintln!("closed after {a:?}, {b:?}, {c:?}");
    eventually_metric(
        &h,
        "stsgate_connections_closed_total",
        &["listener=\"http\"", "reason=\"handshake_timeout\""],
        3.0,
    )
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(listen("idle_timeout: 1s\nheader_read_timeout: 30s\nhandshake_timeout: 30s"))
        .start()
        .await;
    // A connection in use is not idle: requests every 400ms for 2.4s.
    let mut busy = TcpStream::connect(h.http_addr).await.unwrap();
    for _ in 0..6 {
        get_healthz(&mut busy).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    get_healthz(&mut busy).await;
    // Then, quiet, it is closed.
    expect_closed_after(&mut busy, SECOND, "an idle keep-alive connection").await;
    eventually_metric(&h, "stsgate_connections_closed_total", &["listener=\"http\"", "reason=\"idle_timeout\""], 1.0)
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_after_idle_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(listen("idle_timeout: 1s\nheader_read_timeout: 30s\nhandshake_timeout: 30s"))
        .start()
        .await;
    let tcp = TcpStream::connect(h.http_addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 (prior knowledge) handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/healthz", h.http_addr)).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.expect("an HTTP/2 answer");
    assert_eq!(response.status(), 200);
    let answered = Instant::now();
    drop(response);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await.expect("the connection ends");
    let took = answered.elapsed();
    ended.unwrap().expect("a graceful end (GOAWAY), not an error");
    assert!(took >= SECOND.mul_f32(0.9), "closed after {took:?}");
    eventually_metric(&h, "stsgate_connections_closed_total", &["listener=\"http\"", "reason=\"idle_timeout\""], 1.0)
        .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_cut_off_by_request_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).edit(listen("request_timeout: 1s")).start().await;
    let mut conn = TcpStream::connect(h.http_addr).await.unwrap();
    conn.write_all(
        b"POST /token HTTP/1.1\r\nHost: stsgate\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 100\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    read.expect("answered and closed within 5s").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(took >= SECOND.mul_f32(0.9), "answered after {took:?}");
    eventually_metric(
        &h,
        "stsgate_connections_closed_total",
        &["listener=\"http\"", "reason=\"request_timeout\""],
        1.0,
    )
    .await;
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// gRPC listener: raw HTTP/2
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The client preface and an empty SETTINGS frame.
fn handshake() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    out
}

/// HPACK, static table only: `:method POST`, `:scheme http`, `:path /`.
const REQUEST_BLOCK: &[u8] = &[0x83, 0x86, 0x84];

/// Reads frames until the server sends GOAWAY with an error or closes;
/// returns every frame type seen and the GOAWAY's (last stream, error code).
async fn read_until_goaway(mut rd: tokio::net::tcp::OwnedReadHalf, within: Duration) -> (Vec<u8>, Option<(u32, u32)>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            kinds.push(kind);
            if kind == GOAWAY {
                let p = &buf[9..9 + len];
                let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                if code != 0 {
                    return (kinds, Some((last, code)));
                }
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => panic!("no GOAWAY and no close within {within:?}; frames seen: {}", kinds.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return (kinds, None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_without_the_http2_preface_is_closed_after_handshake_timeout() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).edit(listen("handshake_timeout: 1s")).start().await;
    let mut silent = TcpStream::connect(h.grpc_addr).await.unwrap();
    let mut half = TcpStream::connect(h.grpc_addr).await.unwrap();
    half.write_all(&PREFACE[..12]).await.unwrap();
    let (a, b) = tokio::join!(
        expect_closed_after(&mut silent, SECOND, "a gRPC connection that sends nothing"),
        expect_closed_after(&mut half, SECOND, "half an HTTP/2 preface"),
    );
    eprintln!("closed after {a:?}, {b:?}");
    // The harness's own connection sent its preface long ago and sat idle
    // through the timeout: it still answers (Envoy keeps one pooled).
    let token = idp.token(&idp.claims("alice", "orders.read"));
    allowed(&h.check_for(&token, "orders").await);
    eventually_metric(
        &h,
        "stsgate_connections_closed_total",
        &["listener=\"grpc\"", "reason=\"handshake_timeout\""],
        2.0,
    )
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_that_stops_answering_pings_is_closed() {
    let idp = MockIdp::start().await;
    let h =
        Harness::builder(&idp).edit(listen("http2_keepalive_interval: 1s\nhttp2_keepalive_timeout: 1s")).start().await;
    // A complete handshake, then silence: no PING is ever answered.
    let mut dead = TcpStream::connect(h.grpc_addr).await.unwrap();
    dead.write_all(&handshake()).await.unwrap();
    let (rd, _wr) = dead.into_split();
    let started = Instant::now();
    let (kinds, goaway) = read_until_goaway(rd, Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert!(kinds.contains(&PING), "the server pinged: {kinds:?}");
    assert!(goaway.is_none(), "closed, not refused: {goaway:?}");
    assert!(took >= Duration::from_millis(1800), "closed after {took:?}, before interval + timeout");
    // A live peer (tonic answers pings) stays connected through many intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    allowed(&h.check_for(&token, "orders").await);
    h.shutdown().await;
}

/// CVE-2023-44487 ("rapid reset"): streams opened and reset at once, as fast
/// as the client can write them. stsgate lets 1024 reset streams wait for
/// its accept loop (Envoy resets many at once, see h2_resets.rs); a client
/// that keeps outrunning it is sent GOAWAY(ENHANCE_YOUR_CALM) and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_goaway() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let tcp = TcpStream::connect(h.grpc_addr).await.unwrap();
    let (rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(read_until_goaway(rd, Duration::from_secs(20)));
    wr.write_all(&handshake()).await.unwrap();
    let mut sent = 0u32;
    // 10,000 open-and-reset pairs, 500 per write.
    'flood: for batch in 0..20u32 {
        let mut out = Vec::new();
        for i in 0..500u32 {
            let id = 2 * (batch * 500 + i) + 1;
            frame(&mut out, HEADERS, END_HEADERS, id, REQUEST_BLOCK);
            frame(&mut out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        }
        if wr.write_all(&out).await.is_err() {
            break 'flood; // the server closed the connection
        }
        sent += 500;
    }
    let (_, goaway) = reader.await.unwrap();
    let (last_stream, code) = goaway.expect("GOAWAY with an error code");
    assert_eq!(code, ENHANCE_YOUR_CALM, "after {sent} resets sent");
    assert!(last_stream < 2 * 10_000, "last stream {last_stream}");
    // Other connections are unaffected.
    fresh_check_is_allowed(&idp, h.grpc_addr).await;
    h.shutdown().await;
}

/// CVE-2025-8671 ("MadeYouReset"): requests malformed so that the server
/// itself resets them. tonic switches h2's cap on such resets off; stsgate
/// puts it back (1024 per connection), then says GOAWAY(ENHANCE_YOUR_CALM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_server_must_reset_are_capped_per_connection() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let tcp = TcpStream::connect(h.grpc_addr).await.unwrap();
    let (rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(read_until_goaway(rd, Duration::from_secs(20)));
    let mut out = handshake();
    // `content-length: x` (literal, static name index 28): not a number, so
    // h2 resets the stream with PROTOCOL_ERROR.
    let mut block = REQUEST_BLOCK.to_vec();
    block.extend_from_slice(&[0x0f, 28 - 15, 1, b'x']);
    for i in 0..2000u32 {
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block);
    }
    let _ = wr.write_all(&out).await;
    let (kinds, goaway) = reader.await.unwrap();
    let resets = kinds.iter().filter(|k| **k == RST_STREAM).count();
    let (_, code) = goaway.unwrap_or_else(|| panic!("no GOAWAY after {resets} server-sent resets"));
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(resets <= stsgate::runtime::listener::MAX_LOCAL_ERROR_RESETS, "{resets} resets before GOAWAY");
    fresh_check_is_allowed(&idp, h.grpc_addr).await;
    h.shutdown().await;
}

/// A slow request head holds its read buffer until `header_read_timeout`:
/// heads are capped at 64 KiB (hyper's default is 400 KiB a connection),
/// while a body may be larger than that buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_capped_at_64_kib_but_bodies_are_not() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let client = reqwest::Client::new();
    let big = "a".repeat(100 * 1024);
    let resp = client.get(h.url("/healthz")).header("x-padding", &big).send().await.unwrap();
    assert_eq!(resp.status(), 431, "a 100 KiB head");
    let resp = client.get(h.url("/healthz")).header("x-padding", &big[..32 * 1024]).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a 32 KiB head");
    // A 60 KiB form is read whole: an OAuth error about its content, not a
    // connection error.
    let form = format!("grant_type=nope&padding={}", &big[..60 * 1024]);
    let resp = client
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
    h.shutdown().await;
}
