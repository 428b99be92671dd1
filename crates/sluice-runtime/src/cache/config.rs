//! `--cache-config`: Triton's `<cache>,<key>=<value>[,...]` values turned into one
//! validated [`CacheConfig`] at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sluice_core::{Error, Result};

/// Where answers are cached (validated from `--cache-config` by [`CacheConfig::parse`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheConfig {
    /// No response cache: `response_cache` in model configs is ignored.
    #[default]
    None,
    /// In process, under a byte budget.
    Local(LocalCacheConfig),
    /// In a Redis server that replicas share.
    Redis(RedisCacheConfig),
}

/// Settings of the in-process cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCacheConfig {
    /// Bytes the entries may take together (fingerprints, outputs and bookkeeping).
    pub size_bytes: u64,
    /// How long an entry lives after it is stored; `None`: until evicted.
    pub ttl: Option<Duration>,
}

/// Settings of the Redis cache (Triton's key names, plus Sluice's `ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCacheConfig {
    pub host: String,
    pub port: u16,
    /// ACL user (`user`, or `username`); `None`: Redis's `default` user.
    pub username: Option<String>,
    /// `password`, or the environment (see [`CacheConfig::with_redis_secrets`]).
    pub password: Option<Secret>,
    pub db: i64,
    /// Bound of one connection attempt (`connect_timeout`, ms).
    pub connect_timeout: Duration,
    /// Bound of one lookup or store (`socket_timeout` or `timeout_ms`, ms): a slow
    /// or unreachable Redis adds at most this to a request.
    pub op_timeout: Duration,
    /// Multiplexed connections to Redis (`pool_size` or `pool`).
    pub pool: usize,
    /// Entry lifetime (`SET ... PX`); `None`: until Redis evicts them.
    pub ttl: Option<Duration>,
    /// TLS to Redis (`tls_enabled=true`, or Sluice's `tls=true`); `None`: plain TCP.
    pub tls: Option<Box<RedisTls>>,
}

/// How Sluice authenticates a Redis server over TLS, and itself to it (Triton's
/// keys). With neither `cacert` nor `cert_dir` the system's trusted roots are used.
/// The server's certificate must name `host` (there is no switch that skips the
/// check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// A PEM file of CA certificates (`cacert`).
    pub ca_file: Option<PathBuf>,
    /// A folder of PEM CA certificates (`cert_dir`; every file in it that holds one).
    pub ca_dir: Option<PathBuf>,
    /// Client certificate chain and key, PEM (`cert` and `key`), for Redis's
    /// `tls-auth-clients`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl RedisCacheConfig {
    /// Defaults chosen for a cache next to the server: a lookup that takes more
    /// than 100 ms is not worth waiting for.
    fn new(host: String) -> RedisCacheConfig {
        RedisCacheConfig {
            host,
            port: 6379,
            username: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_millis(1000),
            op_timeout: Duration::from_millis(100),
            pool: 2,
            ttl: None,
            tls: None,
        }
    }
}

/// A string that never shows in logs, `Debug` output or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Raw values of one cache's keys, collected over every `--cache-config`.
#[derive(Default)]
struct Keys(Vec<(String, String)>);

impl Keys {
    fn take(&mut self, names: &[&str]) -> Option<(String, String)> {
        // The last value given wins, as with repeated flags elsewhere.
        let ix = self
            .0
            .iter()
            .rposition(|(k, _)| names.contains(&k.as_str()))?;
        let found = self.0.remove(ix);
        self.0.retain(|(k, _)| !names.contains(&k.as_str()));
        Some(found)
    }
}

fn millis(cache: &str, key: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            Error::invalid(format!(
                "--cache-config {cache}: {key} must be a positive number of milliseconds, got '{value}'"
            ))
        })
}

fn seconds(cache: &str, value: &str) -> Result<Duration> {
    let secs = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "--cache-config {cache}: ttl must be a positive number of seconds, got '{value}'"
            ))
        })?;
    Ok(Duration::from_secs_f64(secs.min(1e9)))
}

fn number<T: std::str::FromStr>(cache: &str, key: &str, value: &str, what: &str) -> Result<T> {
    value.trim().parse::<T>().map_err(|_| {
        Error::invalid(format!(
            "--cache-config {cache}: {key} must be {what}, got '{value}'"
        ))
    })
}

impl CacheConfig {
    /// Parses Triton's `--cache-config` values, each `<cache>,<key>=<value>[,...]`
    /// (repeatable, as `--cache-config redis,host=r --cache-config redis,port=6379`),
    /// or `none`. Keys of `local`: `size` (bytes, required) and Sluice's `ttl`
    /// (seconds, fractions allowed). Keys of `redis`: `host` (required), `port`
    /// (6379), `user`/`username`, `password`, `db`, `connect_timeout` (ms),
    /// `socket_timeout`/`timeout_ms` (ms), `pool_size`/`pool`, `ttl` (s),
    /// Triton's `wait_timeout` (accepted; connections are multiplexed, so a request
    /// never waits for one), and TLS: `tls_enabled`/`tls` (`true`/`false`), `cacert`,
    /// `cert_dir`, `cert` and `key` (paths), `sni` (must equal `host`).
    pub fn parse<S: AsRef<str>>(flags: &[S]) -> Result<CacheConfig> {
        let mut cache: Option<&str> = None;
        let mut keys = Keys::default();
        let mut none = false;
        for flag in flags {
            let flag = flag.as_ref().trim();
            if flag.is_empty() {
                continue;
            }
            let mut parts = flag.split(',');
            let name = parts.next().unwrap_or_default().trim();
            let name = match name {
                "none" => {
                    none = true;
                    continue;
                }
                "local" => "local",
                "redis" => "redis",
                other => {
                    return Err(Error::invalid(format!(
                    "--cache-config: unknown cache '{other}' (expected 'local', 'redis' or 'none')"
                )))
                }
            };
            if cache.is_some_and(|c| c != name) {
                return Err(Error::invalid(
                    "--cache-config: only one cache may be configured",
                ));
            }
            cache = Some(name);
            for part in parts {
                // Never echo the part: it may be `password=...`.
                let (key, value) = part.split_once('=').ok_or_else(|| {
                    Error::invalid(format!(
                        "--cache-config {name}: every part after the cache name must be key=value"
                    ))
                })?;
                keys.0.push((key.trim().to_owned(), value.to_owned()));
            }
        }
        match (none, cache) {
            (true, Some(_)) => Err(Error::invalid(
                "--cache-config none cannot be combined with a cache",
            )),
            (_, None) => Ok(CacheConfig::None),
            (false, Some("local")) => Ok(CacheConfig::Local(local(keys)?)),
            (false, Some(_)) => Ok(CacheConfig::Redis(redis(keys)?)),
        }
    }

    /// Fills the Redis credentials that `--cache-config` left out from the
    /// environment (`SLUICE_CACHE_REDIS_PASSWORD`, `SLUICE_CACHE_REDIS_USERNAME`;
    /// the binary reads them): a flag's value wins.
    #[must_use]
    pub fn with_redis_secrets(self, password: Option<String>, username: Option<String>) -> Self {
        match self {
            CacheConfig::Redis(mut r) => {
                if r.password.is_none() {
                    r.password = password.filter(|p| !p.is_empty()).map(Secret);
                }
                if r.username.is_none() {
                    r.username = username.filter(|u| !u.is_empty());
                }
                CacheConfig::Redis(r)
            }
            other => other,
        }
    }
}

fn local(mut keys: Keys) -> Result<LocalCacheConfig> {
    let size = keys.take(&["size"]);
    let ttl = keys.take(&["ttl"]);
    if let Some((other, _)) = keys.0.first() {
        return Err(Error::invalid(format!(
            "--cache-config local: unknown key '{other}' (expected size or ttl)"
        )));
    }
    let (_, size) = size.ok_or_else(|| Error::invalid("--cache-config local needs size=BYTES"))?;
    let size_bytes: u64 = number("local", "size", &size, "a number of bytes")?;
    if size_bytes == 0 {
        return Err(Error::invalid(
            "--cache-config local: size must be positive (use 'none' to turn the cache off)",
        ));
    }
    let ttl = ttl.map(|(_, v)| seconds("local", &v)).transpose()?;
    Ok(LocalCacheConfig { size_bytes, ttl })
}

fn redis(mut keys: Keys) -> Result<RedisCacheConfig> {
    const C: &str = "redis";
    let (_, host) = keys
        .take(&["host"])
        .filter(|(_, h)| !h.trim().is_empty())
        .ok_or_else(|| Error::invalid("--cache-config redis needs host=HOST"))?;
    let mut r = RedisCacheConfig::new(host.trim().to_owned());
    if let Some((_, v)) = keys.take(&["port"]) {
        r.port = number::<u16>(C, "port", &v, "a TCP port")?;
        if r.port == 0 {
            return Err(Error::invalid("--cache-config redis: port must not be 0"));
        }
    }
    if let Some((_, v)) = keys.take(&["user", "username"]) {
        r.username = Some(v.trim().to_owned()).filter(|u| !u.is_empty());
    }
    if let Some((_, v)) = keys.take(&["password"]) {
        r.password = Some(Secret(v)).filter(|p| !p.0.is_empty());
    }
    if let Some((_, v)) = keys.take(&["db"]) {
        r.db = number::<i64>(C, "db", &v, "a database number")?;
        if r.db < 0 {
            return Err(Error::invalid("--cache-config redis: db must be >= 0"));
        }
    }
    if let Some((k, v)) = keys.take(&["connect_timeout"]) {
        r.connect_timeout = millis(C, &k, &v)?;
    }
    if let Some((k, v)) = keys.take(&["socket_timeout", "timeout_ms"]) {
        r.op_timeout = millis(C, &k, &v)?;
    }
    if let Some((k, v)) = keys.take(&["pool_size", "pool"]) {
        r.pool = number::<usize>(C, &k, &v, "a number of connections")?;
        if !(1..=64).contains(&r.pool) {
            return Err(Error::invalid(format!(
                "--cache-config redis: {k} must be between 1 and 64, got {}",
                r.pool
            )));
        }
    }
    if let Some((_, v)) = keys.take(&["ttl"]) {
        r.ttl = Some(seconds(C, &v)?);
    }
    if let Some((k, v)) = keys.take(&["wait_timeout"]) {
        millis(C, &k, &v)?;
    }
    r.tls = tls(&mut keys, &r.host)?;
    if let Some((other, _)) = keys.0.first() {
        return Err(Error::invalid(format!(
            "--cache-config redis: unknown key '{other}'; expected host, port, user, password, db, \
             connect_timeout, socket_timeout (timeout_ms), pool_size (pool), wait_timeout, ttl, \
             tls_enabled (tls), cacert, cert_dir, cert, key or sni"
        )));
    }
    Ok(r)
}

/// The TLS keys of `redis`: `None` unless `tls_enabled` (or `tls`) is `true`; the
/// certificate keys without it are an error rather than silently plain TCP.
fn tls(keys: &mut Keys, host: &str) -> Result<Option<Box<RedisTls>>> {
    const C: &str = "redis";
    let enabled = match keys.take(&["tls_enabled", "tls"]) {
        None => false,
        Some((k, v)) => match v.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(Error::invalid(format!(
                    "--cache-config {C}: {k} must be true or false, got '{v}'"
                )))
            }
        },
    };
    let path = |keys: &mut Keys, name: &str| {
        keys.take(&[name])
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config = RedisTls {
        ca_file: path(keys, "cacert"),
        ca_dir: path(keys, "cert_dir"),
        cert: path(keys, "cert"),
        key: path(keys, "key"),
    };
    let sni = keys.take(&["sni"]).map(|(_, v)| v.trim().to_owned());
    if !enabled {
        if config != RedisTls::default() || sni.is_some() {
            return Err(Error::invalid(format!(
                "--cache-config {C}: cacert, cert_dir, cert, key and sni need tls_enabled=true"
            )));
        }
        return Ok(None);
    }
    if config.cert.is_some() != config.key.is_some() {
        return Err(Error::invalid(format!(
            "--cache-config {C}: cert and key must be given together (a client certificate and its key)"
        )));
    }
    if let Some(sni) = sni.filter(|s| !s.is_empty() && s != host) {
        return Err(Error::unsupported(format!(
            "--cache-config {C}: sni '{sni}' differs from host '{host}': the server name checked \
             is the host's; connect by that name instead"
        )));
    }
    Ok(Some(Box::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_flags_parse_as_triton() {
        assert_eq!(CacheConfig::parse::<&str>(&[]).unwrap(), CacheConfig::None);
        assert_eq!(CacheConfig::parse(&["none"]).unwrap(), CacheConfig::None);
        assert_eq!(
            CacheConfig::parse(&["local,size=1048576"]).unwrap(),
            CacheConfig::Local(LocalCacheConfig {
                size_bytes: 1_048_576,
                ttl: None
            })
        );
        assert_eq!(
            CacheConfig::parse(&["local,size=100", "local,ttl=1.5"]).unwrap(),
            CacheConfig::Local(LocalCacheConfig {
                size_bytes: 100,
                ttl: Some(Duration::from_millis(1500))
            })
        );
        for bad in [
            &["local"][..],
            &["local,size=0"],
            &["local,size=-1"],
            &["local,size=10,colour=red"],
            &["local,size"],
            &["memcached,size=1"],
            &["none", "local,size=10"],
            &["local,size=10,ttl=0"],
            &["local,size=10", "redis,host=r"],
            &["redis,port=1"],
        ] {
            assert!(CacheConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redis_flags_parse_with_triton_keys_and_defaults() {
        let CacheConfig::Redis(r) = CacheConfig::parse(&["redis,host=r1"]).unwrap() else {
            panic!("not redis")
        };
        assert_eq!(r, RedisCacheConfig::new("r1".into()));
        let flags = [
            "redis,host=r2",
            "redis,port=7000,user=svc,password=p4ss,db=3",
            "redis,connect_timeout=250,socket_timeout=20,pool_size=4,wait_timeout=100,ttl=60",
        ];
        let CacheConfig::Redis(r) = CacheConfig::parse(&flags).unwrap() else {
            panic!("not redis")
        };
        assert_eq!(
            r,
            RedisCacheConfig {
                host: "r2".into(),
                port: 7000,
                username: Some("svc".into()),
                password: Some(Secret::new("p4ss")),
                db: 3,
                connect_timeout: Duration::from_millis(250),
                op_timeout: Duration::from_millis(20),
                pool: 4,
                ttl: Some(Duration::from_secs(60)),
                tls: None,
            }
        );
        // Sluice's aliases.
        let CacheConfig::Redis(r) =
            CacheConfig::parse(&["redis,host=h,username=u,timeout_ms=7,pool=3"]).unwrap()
        else {
            panic!("not redis")
        };
        assert_eq!(
            (r.username.as_deref(), r.op_timeout, r.pool),
            (Some("u"), Duration::from_millis(7), 3)
        );
        for bad in [
            &["redis"][..],
            &["redis,host="],
            &["redis,host=h,port=0"],
            &["redis,host=h,port=70000"],
            &["redis,host=h,db=-1"],
            &["redis,host=h,socket_timeout=0"],
            &["redis,host=h,pool=0"],
            &["redis,host=h,ttl=-3"],
            &["redis,host=h,tls_enabled=maybe"],
            &["redis,host=h,cacert=/x"],
            &["redis,host=h,tls_enabled=false,cert=/c,key=/k"],
            &["redis,host=h,tls=true,cert=/c"],
            &["redis,host=h,tls=true,key=/k"],
            &["redis,host=h,tls=true,sni=other"],
            &["redis,host=h,colour=red"],
            &["none", "redis,host=h"],
        ] {
            assert!(CacheConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redis_tls_keys_parse_as_triton() {
        let tls_of = |flags: &[&str]| match CacheConfig::parse(flags).unwrap() {
            CacheConfig::Redis(r) => r.tls,
            other => panic!("{other:?}"),
        };
        assert_eq!(tls_of(&["redis,host=h"]), None);
        assert_eq!(tls_of(&["redis,host=h,tls_enabled=false"]), None);
        assert_eq!(tls_of(&["redis,host=h,tls=true"]), Some(Box::default()));
        assert_eq!(
            tls_of(&[
                "redis,host=r.example,tls_enabled=true,cacert=/ca.pem",
                "redis,cert_dir=/cas,cert=/c.pem,key=/k.pem,sni=r.example",
            ]),
            Some(Box::new(RedisTls {
                ca_file: Some("/ca.pem".into()),
                ca_dir: Some("/cas".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }))
        );
    }

    #[test]
    fn the_password_never_shows() {
        let flags = ["redis,host=h,password=hunter2,pool=zero"];
        let err = CacheConfig::parse(&flags).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = CacheConfig::parse(&["redis,host=h,hunter2"]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let config = CacheConfig::parse(&["redis,host=h,password=hunter2"]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_come_from_the_environment_unless_a_flag_gives_them() {
        let env = |c: CacheConfig| c.with_redis_secrets(Some("envpw".into()), Some("envu".into()));
        let CacheConfig::Redis(r) = env(CacheConfig::parse(&["redis,host=h"]).unwrap()) else {
            panic!()
        };
        assert_eq!(r.password, Some(Secret::new("envpw")));
        assert_eq!(r.username.as_deref(), Some("envu"));
        let CacheConfig::Redis(r) =
            env(CacheConfig::parse(&["redis,host=h,password=flag,user=fu"]).unwrap())
        else {
            panic!()
        };
        assert_eq!(r.password, Some(Secret::new("flag")));
        assert_eq!(r.username.as_deref(), Some("fu"));
    }
}
