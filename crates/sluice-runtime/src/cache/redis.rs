//! The Redis store: entries shared by every replica that points at one Redis.
//!
//! Key decision: Redis is an accelerator, never a dependency of an answer. Every
//! lookup and store is bounded by `socket_timeout`; any error, timeout or value that
//! does not decode reads as a miss, and the request runs its model. The first error
//! of an outage is logged and counted; while Redis stays down, one request per
//! [`PROBE_INTERVAL`] tries it and the others skip it at no cost, so an outage adds
//! at most one timeout to a few requests instead of one to every request. The
//! first success after an outage is logged too. Credentials are checked once at
//! start-up (a wrong password is a start-up error, not an outage).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use sluice_core::{Error, Result};

use super::config::{RedisCacheConfig, RedisTls};
use super::key::Entry;
use super::CacheCounters;

/// While Redis is down, how often one request tries it again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Keys are `sluice:v1:<32 hex digits of the 128-bit hash>`.
fn redis_key(key: u128) -> String {
    format!("sluice:v1:{key:032x}")
}

pub(crate) struct RedisStore {
    config: RedisCacheConfig,
    client: redis::Client,
    /// Created inside the server's tokio runtime (their connection tasks live
    /// there): by [`RedisStore::open`] at start, else on first use; each reconnects
    /// by itself after a drop.
    connections: tokio::sync::OnceCell<Vec<ConnectionManager>>,
    next: AtomicUsize,
    counters: Arc<CacheCounters>,
    /// The last operation succeeded.
    healthy: AtomicBool,
    /// While unhealthy: when (nanoseconds after `epoch`) the next probe may run.
    probe_at: AtomicU64,
    epoch: Instant,
}

impl RedisStore {
    /// Connects once, synchronously, to check the address and credentials, so a
    /// wrong password or an unreachable Redis is a clear start-up error.
    pub fn connect(config: RedisCacheConfig, counters: Arc<CacheCounters>) -> Result<RedisStore> {
        let mut redis = RedisConnectionInfo::default().set_db(config.db);
        if let Some(user) = &config.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &config.password {
            redis = redis.set_password(password.expose());
        }
        let tls = if config.tls.is_some() { " (TLS)" } else { "" };
        let where_ = format!("Redis at {}:{}{tls}", config.host, config.port);
        let addr = match config.tls {
            None => ConnectionAddr::Tcp(config.host.clone(), config.port),
            Some(_) => ConnectionAddr::TcpTls {
                host: config.host.clone(),
                port: config.port,
                insecure: false,
                tls_params: None,
            },
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| Error::invalid(format!("--cache-config redis: {where_}: {e}")))?
            .set_redis_settings(redis);
        let client = match &config.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                // The redis crate's rustls takes the process-wide provider.
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::build_with_tls(info, certificates(tls)?)
            }
        }
        .map_err(|e| Error::invalid(format!("--cache-config redis: {where_}: {e}")))?;
        let check = client
            .get_connection_with_timeout(config.connect_timeout)
            .and_then(|mut c| {
                c.set_read_timeout(Some(config.connect_timeout))?;
                redis::cmd("PING").query::<String>(&mut c)
            });
        if let Err(e) = check {
            return Err(start_error(&config, &where_, &e));
        }
        tracing::info!(
            redis = %where_,
            tls = config.tls.is_some(),
            client_certificate = config.tls.as_ref().is_some_and(|t| t.cert.is_some()),
            db = config.db,
            ttl_secs = config.ttl.map(|t| t.as_secs_f64()),
            "response cache: using Redis"
        );
        Ok(RedisStore {
            config,
            client,
            connections: tokio::sync::OnceCell::new(),
            next: AtomicUsize::new(0),
            counters,
            healthy: AtomicBool::new(true),
            probe_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Opens the pool's connections now, each checked with a PING bounded by
    /// `connect_timeout`, so the first lookups after start do not pay the TCP (and
    /// TLS) handshake inside their `socket_timeout`. A failure is an outage like any
    /// other: requests run their models and a later one reconnects.
    pub async fn open(&self) {
        if self.connection().await.is_none() {
            return;
        }
        let Some(all) = self.connections.get() else {
            return;
        };
        let pings = all.iter().map(|c| {
            let mut c = c.clone();
            async move {
                tokio::time::timeout(
                    self.config.connect_timeout,
                    redis::cmd("PING").query_async::<String>(&mut c),
                )
                .await
            }
        });
        for answer in futures_util::future::join_all(pings).await {
            match answer {
                Ok(Ok(_)) => self.succeeded(),
                Ok(Err(e)) => self.failed(&e.to_string()),
                Err(_) => self.failed(&format!(
                    "no answer to PING within {} ms (connect_timeout)",
                    self.config.connect_timeout.as_millis()
                )),
            }
        }
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let all = self
            .connections
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout))
                    .set_response_timeout(Some(self.config.op_timeout))
                    // One attempt per reconnect: the next command starts another, and
                    // `probe` paces them while Redis is down.
                    .set_number_of_retries(1);
                (0..self.config.pool)
                    .map(|_| {
                        ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone())
                    })
                    .collect::<redis::RedisResult<Vec<_>>>()
            })
            .await;
        match all {
            Ok(all) => {
                let ix = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
                Some(all[ix].clone())
            }
            Err(e) => {
                self.failed(&e.to_string());
                None
            }
        }
    }

    /// Whether this request should talk to Redis now: always while healthy; while
    /// down, only the one request that claims the next probe slot.
    fn may_try(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let at = self.probe_at.load(Ordering::Relaxed);
        let next = now.saturating_add(u64::try_from(PROBE_INTERVAL.as_nanos()).unwrap_or(0));
        now >= at
            && self
                .probe_at
                .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn failed(&self, what: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::Relaxed) {
            self.counters.outages.fetch_add(1, Ordering::Relaxed);
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let next = now.saturating_add(u64::try_from(PROBE_INTERVAL.as_nanos()).unwrap_or(0));
            self.probe_at.store(next, Ordering::Relaxed);
            tracing::warn!(
                redis = %format!("{}:{}", self.config.host, self.config.port),
                error = %what,
                "response cache: Redis is unavailable; requests run their models until it is back"
            );
        }
    }

    fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(
                redis = %format!("{}:{}", self.config.host, self.config.port),
                "response cache: Redis is back"
            );
        }
    }

    /// Runs one command under the operation timeout; `None` on any failure.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        if !self.may_try() {
            return None;
        }
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.config.op_timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed(&format!(
                    "no answer within {} ms (socket_timeout)",
                    self.config.op_timeout.as_millis()
                ));
                None
            }
        }
    }

    /// The entry stored under `key`, if Redis answers in time with one that decodes.
    pub async fn get(&self, key: u128) -> Option<Arc<Entry>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(redis_key(key));
        let value: Option<Bytes> = self.query(cmd).await?;
        let entry = Entry::decode(value?);
        if entry.is_none() {
            // Another program's value, or another layout: a miss, and worth knowing.
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        entry.map(Arc::new)
    }

    /// Stores `entry` under `key` with the configured TTL; `false` when Redis did
    /// not take it.
    pub async fn put(&self, key: u128, entry: &Entry) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key)).arg(entry.encode().as_ref());
        if let Some(ttl) = self.config.ttl {
            cmd.arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        self.query::<()>(cmd).await.is_some()
    }
}

/// The PEM files `tls` names, read once at start-up: CA certificates from `cacert`
/// and every file of `cert_dir` that holds one (`None`: the system's roots), and the
/// client certificate and key.
fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::invalid(format!(
                "--cache-config redis: cannot read {what} {}: {e}",
                path.display()
            ))
        })
    };
    let mut roots = Vec::new();
    if let Some(path) = &tls.ca_file {
        roots.extend(read("cacert", path)?);
        roots.push(b'\n');
    }
    if let Some(dir) = &tls.ca_dir {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::invalid(format!(
                "--cache-config redis: cannot read cert_dir {}: {e}",
                dir.display()
            ))
        })?;
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        let mut found = false;
        for path in paths.iter().filter(|p| p.is_file()) {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            if bytes
                .windows(27)
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                roots.extend(bytes);
                roots.push(b'\n');
                found = true;
            }
        }
        if !found {
            return Err(Error::invalid(format!(
                "--cache-config redis: cert_dir {} holds no PEM certificate",
                dir.display()
            )));
        }
    }
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert", cert)?,
            client_key: read("key", key)?,
        }),
        _ => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert: (!roots.is_empty()).then_some(roots),
    })
}

/// A start-up failure in words an operator can act on. `RedisError`'s text holds
/// the server's reply or the OS error, never the credentials.
fn start_error(config: &RedisCacheConfig, where_: &str, e: &redis::RedisError) -> Error {
    let user = config.username.as_deref().unwrap_or("default");
    let code = e.code().unwrap_or_default();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["WRONGPASS", "NOAUTH", "NOPERM"].contains(&code)
    {
        let how = if config.password.is_some() {
            "the password given was refused"
        } else {
            "it requires a password (give password= or SLUICE_CACHE_REDIS_PASSWORD)"
        };
        return Error::invalid(format!(
            "--cache-config redis: cannot authenticate to {where_} as user '{user}': {how} ({e})"
        ));
    }
    if config.tls.is_some() && e.is_io_error() && !e.is_connection_refusal() && !e.is_timeout() {
        // rustls reports a refused certificate (ours or the server's) as an I/O error.
        return Error::unavailable(format!(
            "--cache-config redis: TLS with {where_} failed (check cacert/cert_dir against the \
             server's certificate, which must name the host, and cert/key if the server \
             asks for a client certificate): {e}"
        ));
    }
    if e.is_timeout() || e.is_io_error() || e.is_connection_refusal() {
        return Error::unavailable(format!(
            "--cache-config redis: cannot reach {where_} within {} ms (connect_timeout): {e}",
            config.connect_timeout.as_millis()
        ));
    }
    Error::invalid(format!(
        "--cache-config redis: {where_} refused the connection (db {}): {e}",
        config.db
    ))
}

#[cfg(test)]
mod tests {
    //! Against a real `redis-server` (Debian's package; `scripts/test.sh` installs it
    //! and sets `SLUICE_REQUIRE_REDIS=1`, which turns a missing server into a failure).

    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};

    use bytes::Bytes;
    use sluice_core::{DataType, Tensor};

    use super::super::config::Secret;
    use super::super::key::Probe;
    use super::*;

    struct Server {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
        password: Option<&'static str>,
    }

    impl Server {
        fn start(password: Option<&'static str>) -> Option<Server> {
            if Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
            {
                assert!(
                    std::env::var("SLUICE_REQUIRE_REDIS").as_deref() != Ok("1"),
                    "redis-server is not installed (scripts/test.sh installs it)"
                );
                eprintln!("skipped: redis-server is not installed");
                return None;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let child = Server::spawn(port, dir.path(), password);
            Some(Server {
                child,
                port,
                dir,
                password,
            })
        }

        fn spawn(port: u16, dir: &std::path::Path, password: Option<&str>) -> Child {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(p) = password {
                cmd.args(["--requirepass", p]);
            }
            let child = cmd.spawn().unwrap();
            let up = (0..400).any(|_| {
                std::thread::sleep(Duration::from_millis(25));
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(up, "redis-server did not start on {port}");
            child
        }

        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        fn restart(&mut self) {
            self.child = Server::spawn(self.port, self.dir.path(), self.password);
        }

        fn config(&self, password: Option<&str>) -> RedisCacheConfig {
            let flag = format!(
                "redis,host=127.0.0.1,port={},ttl=60,socket_timeout=200",
                self.port
            );
            let super::super::CacheConfig::Redis(mut r) =
                super::super::CacheConfig::parse(&[flag]).unwrap()
            else {
                unreachable!()
            };
            r.password = password.map(Secret::new);
            r
        }

        fn sync(&self) -> redis::Connection {
            let mut url = format!("redis://127.0.0.1:{}/", self.port);
            if let Some(p) = self.password {
                url = format!("redis://:{p}@127.0.0.1:{}/", self.port);
            }
            redis::Client::open(url).unwrap().get_connection().unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn entry(n: u8) -> (u128, Entry) {
        let inputs = vec![Tensor {
            name: "x".into(),
            datatype: DataType::U8,
            shape: vec![1],
            data: Bytes::copy_from_slice(&[n]),
        }];
        let probe = Probe {
            model: "m",
            version: 1,
            scope: 3,
            inputs: &inputs,
        };
        (probe.hash(), Entry::new(probe, &inputs))
    }

    #[tokio::test]
    async fn entries_round_trip_with_their_ttl_and_foreign_values_miss() {
        let Some(server) = Server::start(Some("pw-1")) else {
            return;
        };
        let counters = Arc::new(CacheCounters::default());
        let store =
            RedisStore::connect(server.config(Some("pw-1")), Arc::clone(&counters)).unwrap();
        let (key, e) = entry(1);
        assert!(store.get(key).await.is_none());
        assert!(store.put(key, &e).await);
        let got = store.get(key).await.unwrap();
        assert_eq!(got.fingerprint, e.fingerprint);
        assert_eq!(got.outputs, e.outputs);
        let mut sync = server.sync();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(redis_key(key))
            .query(&mut sync)
            .unwrap();
        assert!(0 < ttl && ttl <= 60_000, "{ttl}");
        assert_eq!(counters.errors.load(Ordering::Relaxed), 0);
        // Someone else's value under our key: a miss, counted, never a wrong answer.
        let () = redis::cmd("SET")
            .arg(redis_key(key))
            .arg("not an entry")
            .query(&mut sync)
            .unwrap();
        assert!(store.get(key).await.is_none());
        assert_eq!(counters.errors.load(Ordering::Relaxed), 1);
        assert_eq!(counters.outages.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_counted_once_and_the_store_recovers() {
        let Some(mut server) = Server::start(None) else {
            return;
        };
        let counters = Arc::new(CacheCounters::default());
        let store = RedisStore::connect(server.config(None), Arc::clone(&counters)).unwrap();
        let (key, e) = entry(2);
        assert!(store.put(key, &e).await);
        server.stop();
        for _ in 0..50 {
            assert!(store.get(key).await.is_none());
        }
        assert_eq!(counters.outages.load(Ordering::Relaxed), 1);
        let errors = counters.errors.load(Ordering::Relaxed);
        assert!(errors >= 1);
        // While down, requests skip Redis between probes instead of each paying a timeout.
        assert!(errors < 50, "{errors} of 50 lookups tried Redis");
        server.restart();
        let mut back = false;
        for _ in 0..100 {
            if store.put(key, &e).await {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "the store never reconnected");
        assert!(store.get(key).await.is_some());
        assert_eq!(counters.outages.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn wrong_or_missing_credentials_fail_at_start_without_the_password() {
        let Some(server) = Server::start(Some("right-pw")) else {
            return;
        };
        let counters = Arc::new(CacheCounters::default());
        let err = RedisStore::connect(server.config(Some("wrong-pw")), Arc::clone(&counters))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot authenticate"), "{err}");
        assert!(!err.to_string().contains("wrong-pw"), "{err}");
        let err = RedisStore::connect(server.config(None), counters)
            .err()
            .unwrap();
        assert!(err.to_string().contains("requires a password"), "{err}");
    }
}
