//! A real `redis-server` (Debian's package, installed by
//! `scripts/install-tools.sh`) on a free loopback port, with a password and
//! without persistence, stopped when dropped. It can be paused (SIGSTOP: the
//! port still accepts connections, nothing answers, the data survives),
//! resumed, and killed and started again on the same port (the data is gone).
//! `start_tls` serves TLS only (`rediss://`), with a certificate of a test CA,
//! and asks for a client certificate of that CA.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::pki::{Ca, Pem};
use super::process::{ChildGuard, TempDir, WAIT, free_port};

pub struct RedisServer {
    pub port: u16,
    pub password: String,
    child: ChildGuard,
    /// The running process, if any (`kill` ends it).
    pid: Option<u32>,
    dir: TempDir,
    /// With `start_tls`: what a client needs.
    tls: Option<Tls>,
}

/// A TLS server's files: the CA's certificate, and a client certificate.
#[derive(Clone)]
pub struct Tls {
    pub ca: String,
    pub client: Pem,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(None).await
    }

    /// Starts `redis-server` serving TLS only, with a server certificate of
    /// `ca` (for localhost and 127.0.0.1), asking for a client certificate of
    /// `ca` (`tls-auth-clients yes`, Redis' default with TLS).
    pub async fn start_tls(ca: &Ca) -> RedisServer {
        RedisServer::start_with(Some((ca.pem(), ca.server("redis"), ca.client("spiffe://test/stsgate")))).await
    }

    async fn start_with(tls: Option<(String, Pem, Pem)>) -> RedisServer {
        let dir = TempDir::new("redis");
        let password = format!("pw-{}-{}", std::process::id(), super::process::now());
        let tls = tls.map(|(ca, server, client)| {
            dir.write("ca.pem", &ca);
            dir.write("server.pem", &server.cert);
            dir.write("server-key.pem", &server.key);
            Tls { ca, client }
        });
        // The port was free a moment ago; another test may take it first.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, &password, &dir, tls.is_some());
            if wait_answering(&mut child, &url(&password, port, tls.as_ref()), tls.as_ref()).await {
                let pid = Some(child.pid());
                return RedisServer { port, password, child, pid, dir, tls };
            }
            child.kill();
        }
        panic!("redis-server did not start (is it installed? scripts/install-tools.sh installs it)");
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/0`, or `rediss://` for TLS.
    pub fn url(&self) -> String {
        url(&self.password, self.port, self.tls.as_ref())
    }

    /// With `start_tls`: the CA's certificate and a client certificate.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// SIGSTOP: connections are still accepted, no command is answered.
    pub fn pause(&self) {
        self.child.signal("STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.child.signal("CONT");
    }

    /// Kills the server (what it held is lost: no persistence).
    pub fn kill(&mut self) {
        self.child.kill();
        self.pid = None;
    }

    /// Starts it again on the same port, empty, after `kill`.
    pub async fn restart(&mut self) {
        self.child = spawn(self.port, &self.password, &self.dir, self.tls.is_some());
        self.pid = Some(self.child.pid());
        let url = self.url();
        let up = wait_answering(&mut self.child, &url, self.tls.as_ref()).await;
        assert!(up, "redis-server did not come back on port {}", self.port);
    }

    /// A connection of its own (not stsgate's), to look at what was stored.
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        let client = client(&self.url(), self.tls.as_ref()).expect("redis URL");
        client.get_multiplexed_async_connection().await.expect("connect to redis-server")
    }

    /// The keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut conn = self.connection().await;
        ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.expect("KEYS")
    }

    /// Seconds `key` still lives (-2: no such key, -1: no expiry).
    pub async fn ttl(&self, key: &str) -> i64 {
        let mut conn = self.connection().await;
        ::redis::cmd("TTL").arg(key).query_async(&mut conn).await.expect("TTL")
    }
}

fn url(password: &str, port: u16, tls: Option<&Tls>) -> String {
    let scheme = if tls.is_some() { "rediss" } else { "redis" };
    format!("{scheme}://:{password}@127.0.0.1:{port}/0")
}

/// A client of `url`, trusting the test CA and presenting its client
/// certificate for TLS.
fn client(url: &str, tls: Option<&Tls>) -> ::redis::RedisResult<::redis::Client> {
    match tls {
        None => ::redis::Client::open(url),
        Some(tls) => ::redis::Client::build_with_tls(
            url,
            ::redis::TlsCertificates {
                client_tls: Some(::redis::ClientTlsConfig {
                    client_cert: tls.client.cert.clone().into_bytes(),
                    client_key: tls.client.key.clone().into_bytes(),
                }),
                root_cert: Some(tls.ca.clone().into_bytes()),
            },
        ),
    }
}

/// Polls PING (authenticated) until it answers PONG; false when `WAIT`
/// passes or the process exits first (its port was taken).
async fn wait_answering(child: &mut ChildGuard, url: &str, tls: Option<&Tls>) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if child.exited().is_some() {
            return false;
        }
        if ping(url, tls).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would take SIGTERM only once resumed: resume it
        // first (the guard then stops it).
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

fn spawn(port: u16, password: &str, dir: &TempDir, tls: bool) -> ChildGuard {
    let mut command = Command::new("redis-server");
    if tls {
        // TLS only: the plain port is off.
        command.args(["--port", "0", "--tls-port", &port.to_string()]);
        command.args(["--tls-cert-file", "server.pem", "--tls-key-file", "server-key.pem"]);
        command.args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "yes"]);
    } else {
        command.args(["--port", &port.to_string()]);
    }
    ChildGuard::spawn(
        "redis-server",
        command
            .current_dir(dir.path())
            .args(["--bind", "127.0.0.1", "--requirepass", password])
            // No persistence: a restart starts empty, and nothing is written but the log.
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

async fn ping(url: &str, tls: Option<&Tls>) -> bool {
    let Ok(client) = client(url, tls) else { return false };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(pong)) if pong == "PONG")
}
