//! A real `redis-server` (Debian's package, installed by
//! `scripts/install-tools.sh`) on a free loopback port, with a password and
//! without persistence, stopped when dropped. It can be paused (SIGSTOP: the
//! port still accepts connections, nothing answers, the data survives),
//! resumed, and killed and started again on the same port (the data is gone).

use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{ChildGuard, TempDir, WAIT, free_port};

pub struct RedisServer {
    pub port: u16,
    pub password: String,
    child: ChildGuard,
    /// The running process, if any (`kill` ends it).
    pid: Option<u32>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let dir = TempDir::new("redis");
        let password = format!("pw-{}-{}", std::process::id(), super::process::now());
        // The port was free a moment ago; another test may take it first.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, &password, &dir);
            if wait_answering(&mut child, &url(&password, port)).await {
                let pid = Some(child.pid());
                return RedisServer { port, password, child, pid, dir };
            }
            child.kill();
        }
        panic!("redis-server did not start (is it installed? scripts/install-tools.sh installs it)");
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        url(&self.password, self.port)
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
        self.child = spawn(self.port, &self.password, &self.dir);
        self.pid = Some(self.child.pid());
        let url = self.url();
        let up = wait_answering(&mut self.child, &url).await;
        assert!(up, "redis-server did not come back on port {}", self.port);
    }

    /// A connection of its own (not stsgate's), to look at what was stored.
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(self.url()).expect("redis URL");
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

fn url(password: &str, port: u16) -> String {
    format!("redis://:{password}@127.0.0.1:{port}/0")
}

/// Polls PING (authenticated) until it answers PONG; false when `WAIT`
/// passes or the process exits first (its port was taken).
async fn wait_answering(child: &mut ChildGuard, url: &str) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if child.exited().is_some() {
            return false;
        }
        if ping(url).await {
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

fn spawn(port: u16, password: &str, dir: &TempDir) -> ChildGuard {
    ChildGuard::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--requirepass", password])
            // No persistence: a restart starts empty, and nothing is written but the log.
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

async fn ping(url: &str) -> bool {
    let Ok(client) = ::redis::Client::open(url) else { return false };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(pong)) if pong == "PONG")
}
