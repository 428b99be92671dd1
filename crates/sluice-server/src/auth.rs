//! Scoped API keys for both protocols.
//!
//! Every endpoint belongs to one of Triton's categories ([`Scope`]): `health`,
//! `metadata`, `inference`, `shared-memory`, `model-config`, `model-repository`,
//! `statistics`, `trace`, `logging`. A key is granted a set of them; a request
//! carries it as `Authorization: Bearer <key>` (an HTTP header or the gRPC
//! `authorization` metadata entry, which is the same HTTP/2 header). No key, or one
//! that is not known, is answered 401 / `UNAUTHENTICATED`; a known key without the
//! endpoint's scope 403 / `PERMISSION_DENIED`; both with an `{"error"}` body over
//! HTTP. Triton's `--http-restricted-api` / `--grpc-restricted-protocol` form
//! (`<apis>:<header>=<value>`) is accepted too: those categories then also open to a
//! request carrying that header with that value.
//!
//! Key decision: the policy keeps only the SHA-256 digests of keys, and a presented
//! key is hashed and compared with every known digest through `subtle`'s
//! constant-time equality, without stopping at a match. The time a check takes is
//! therefore independent of how many leading bytes of a wrong key are right (and of
//! the key's length, since digests have one length), and the keys never sit in
//! memory or logs in the clear after loading. With keys configured, categories are
//! closed unless named open (by default `health`, so that probes need no secret);
//! with only Triton-style restrictions, unrestricted categories stay open as in
//! Triton.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// One of Triton's endpoint categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Health,
        Scope::Metadata,
        Scope::Inference,
        Scope::SharedMemory,
        Scope::ModelConfig,
        Scope::ModelRepository,
        Scope::Statistics,
        Scope::Trace,
        Scope::Logging,
    ];

    /// Triton's name of the category.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Health => "health",
            Scope::Metadata => "metadata",
            Scope::Inference => "inference",
            Scope::SharedMemory => "shared-memory",
            Scope::ModelConfig => "model-config",
            Scope::ModelRepository => "model-repository",
            Scope::Statistics => "statistics",
            Scope::Trace => "trace",
            Scope::Logging => "logging",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name.trim())
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);
    pub const ALL: Scopes = Scopes((1 << 9) - 1);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    /// A comma-separated list of category names; `*` or `all` for every one;
    /// `none` or an empty string for none.
    pub fn parse(list: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" || name == "all" {
                scopes = Scopes::ALL;
            } else if name == "none" {
            } else {
                let scope = Scope::parse(name).ok_or_else(|| {
                    format!(
                        "unknown API category '{name}' (expected some of: {}, or *)",
                        Scope::ALL.map(Scope::name).join(", ")
                    )
                })?;
                scopes = scopes.with(scope);
            }
        }
        Ok(scopes)
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Scopes::ALL {
            return f.write_str("*");
        }
        let names: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Shortest key accepted: a guessable key is no key.
pub const MIN_KEY_LEN: usize = 16;

/// An API key as loaded: a name (for logs), the secret, its scopes.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    key: String,
    pub scopes: Scopes,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl ApiKey {
    pub fn new(name: &str, key: &str, scopes: Scopes) -> Result<ApiKey, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the API key '{name}' is shorter than {MIN_KEY_LEN} characters"
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the API key '{name}' has characters other than printable ASCII"
            ));
        }
        Ok(ApiKey {
            name: name.to_owned(),
            key: key.to_owned(),
            scopes,
        })
    }
}

/// Parses API keys: one per line (or separated by `;`), `<name> <scopes> <key>`
/// with whitespace between, `#` starting a comment line. `source` names the file
/// or variable in errors (never a key).
pub fn parse_keys(text: &str, source: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (n, line) in text.split(['\n', ';']).enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, key] = fields[..] else {
            return Err(format!(
                "{source}: entry {}: expected `<name> <scopes> <key>`, found {} fields",
                n + 1,
                fields.len()
            ));
        };
        let scopes = Scopes::parse(scopes).map_err(|e| format!("{source}: key '{name}': {e}"))?;
        let key = ApiKey::new(name, key, scopes).map_err(|e| format!("{source}: {e}"))?;
        if keys.iter().any(|k| k.name == key.name) {
            return Err(format!("{source}: the key name '{name}' appears twice"));
        }
        if keys.iter().any(|k| k.key == key.key) {
            return Err(format!(
                "{source}: the keys '{name}' and another are the same secret"
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Triton's restricted-API form: these categories also open to a request whose
/// `header` carries `value`.
#[derive(Clone)]
pub struct Restriction {
    pub scopes: Scopes,
    pub header: HeaderName,
    value: String,
}

impl std::fmt::Debug for Restriction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restriction")
            .field("scopes", &self.scopes)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Parses `<apis>:<key>=<value>` (Triton's `--http-restricted-api` and
/// `--grpc-restricted-protocol`).
pub fn parse_restriction(spec: &str) -> Result<Restriction, String> {
    let bad = || format!("'{}' is not `<apis>:<header>=<value>`", redact_value(spec));
    let (apis, rest) = spec.split_once(':').ok_or_else(bad)?;
    let (name, value) = rest.split_once('=').ok_or_else(bad)?;
    let scopes = Scopes::parse(apis)?;
    if scopes == Scopes::NONE {
        return Err(bad());
    }
    let header = HeaderName::try_from(name.trim().to_ascii_lowercase())
        .map_err(|_| format!("'{name}' is not a header name"))?;
    if value.is_empty() || HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "the value for header '{header}' is empty or not a header value"
        ));
    }
    Ok(Restriction {
        scopes,
        header,
        value: value.to_owned(),
    })
}

fn redact_value(spec: &str) -> String {
    match spec.split_once('=') {
        Some((head, _)) => format!("{head}=<redacted>"),
        None => spec.to_owned(),
    }
}

type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The index of `presented` among `known`, compared in constant time: every digest
/// is compared, whatever matched before, and each comparison looks at every byte.
fn find(presented: &Digest, known: impl Iterator<Item = Digest>) -> Option<usize> {
    let mut found = u32::MAX;
    for (i, d) in known.enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX - 1);
        found.conditional_assign(&i, presented.ct_eq(&d));
    }
    (found != u32::MAX).then_some(found as usize)
}

struct KnownKey {
    name: String,
    digest: Digest,
    scopes: Scopes,
}

struct KnownRestriction {
    scopes: Scopes,
    header: HeaderName,
    digest: Digest,
}

/// Who may call what, on one protocol.
pub struct AuthPolicy {
    keys: Vec<KnownKey>,
    restrictions: Vec<KnownRestriction>,
    open: Scopes,
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// What a check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No credentials, or ones that are not known: 401 / `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// Known credentials without the scope: 403 / `PERMISSION_DENIED`.
    Forbidden(String),
}

impl AuthPolicy {
    /// A policy from keys (may be empty) and Triton-style restrictions. `open`:
    /// categories anyone may call when keys are configured.
    pub fn new(keys: &[ApiKey], restrictions: &[Restriction], open: Scopes) -> AuthPolicy {
        AuthPolicy {
            keys: keys
                .iter()
                .map(|k| KnownKey {
                    name: k.name.clone(),
                    digest: digest(k.key.as_bytes()),
                    scopes: k.scopes,
                })
                .collect(),
            restrictions: restrictions
                .iter()
                .map(|r| KnownRestriction {
                    scopes: r.scopes,
                    header: r.header.clone(),
                    digest: digest(r.value.as_bytes()),
                })
                .collect(),
            open,
        }
    }

    /// Whether the policy restricts anything at all.
    pub fn is_active(&self) -> bool {
        !self.keys.is_empty() || !self.restrictions.is_empty()
    }

    /// One line for the startup log: key names and scopes, never a secret.
    pub fn summary(&self) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{}={}", k.name, k.scopes))
            .collect();
        let restricted: Vec<String> = self
            .restrictions
            .iter()
            .map(|r| format!("{}:{}", r.scopes, r.header))
            .collect();
        format!(
            "keys [{}], restricted [{}], open without a key [{}]",
            keys.join(" "),
            restricted.join(" "),
            if self.keys.is_empty() {
                "all unrestricted".to_owned()
            } else {
                self.open.to_string()
            }
        )
    }

    /// Decides a request to an endpoint of `scope` (`None`: no known endpoint, which
    /// any valid key may reach, to learn it does not exist) with these headers.
    pub fn check(&self, scope: Option<Scope>, headers: &HeaderMap) -> Decision {
        let keys_mode = !self.keys.is_empty();
        let restricted = |s: Scope| self.restrictions.iter().any(|r| r.scopes.contains(s));
        match scope {
            Some(s) if keys_mode && self.open.contains(s) => return Decision::Allow,
            Some(s) if !keys_mode && !restricted(s) => return Decision::Allow,
            None if !keys_mode => return Decision::Allow,
            _ => {}
        }
        // Triton-style headers: any that matches opens its categories.
        let mut header_ok = false;
        let mut header_elsewhere = false;
        for r in &self.restrictions {
            let Some(value) = headers.get(&r.header) else {
                continue;
            };
            if find(&digest(value.as_bytes()), std::iter::once(r.digest)).is_some() {
                match scope {
                    Some(s) if r.scopes.contains(s) => header_ok = true,
                    _ => header_elsewhere = true,
                }
            }
        }
        if header_ok {
            return Decision::Allow;
        }
        let what = scope.map_or("this endpoint", Scope::name);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let key = bearer.and_then(|token| {
            find(
                &digest(token.as_bytes()),
                self.keys.iter().map(|k| k.digest),
            )
            .map(|i| &self.keys[i])
        });
        match (key, scope) {
            (Some(_), None) => Decision::Allow,
            (Some(k), Some(s)) if k.scopes.contains(s) => Decision::Allow,
            (Some(k), Some(s)) => Decision::Forbidden(format!(
                "the API key '{}' does not grant the '{}' scope",
                k.name,
                s.name()
            )),
            (None, _) if header_elsewhere => Decision::Forbidden(format!(
                "the credentials given do not grant the '{what}' scope"
            )),
            (None, _) if bearer.is_some() => {
                Decision::Unauthenticated(format!("unknown API key for {what}"))
            }
            (None, _) if headers.contains_key(header::AUTHORIZATION) => {
                Decision::Unauthenticated("the authorization header must be `Bearer <key>`".into())
            }
            (None, _) => Decision::Unauthenticated(format!(
                "{what} needs an API key (`Authorization: Bearer <key>`)"
            )),
        }
    }
}

/// The category of an HTTP endpoint, by path (`None`: not a known endpoint).
pub fn http_scope(path: &str) -> Option<Scope> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Scope::Metadata);
    }
    let parts: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    match parts[..] {
        ["health", ..] => Some(Scope::Health),
        ["repository", ..] => Some(Scope::ModelRepository),
        ["logging"] => Some(Scope::Logging),
        ["trace", ..] => Some(Scope::Trace),
        [p, ..] if p == "systemsharedmemory" || p == "cudasharedmemory" => {
            Some(Scope::SharedMemory)
        }
        ["models", "stats"] => Some(Scope::Statistics),
        ["models", _, ref tail @ ..] => {
            let tail = match tail {
                ["versions", _, t @ ..] => t,
                t => t,
            };
            match tail {
                [] => Some(Scope::Metadata),
                ["ready"] => Some(Scope::Health),
                ["config"] => Some(Scope::ModelConfig),
                ["infer" | "generate" | "generate_stream"] => Some(Scope::Inference),
                ["stats"] => Some(Scope::Statistics),
                ["instances"] => Some(Scope::ModelRepository),
                ["trace", ..] => Some(Scope::Trace),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The category of a gRPC method, by path (`/package.Service/Method`).
pub fn grpc_scope(path: &str) -> Option<Scope> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service == "grpc.health.v1.Health" {
        return Some(Scope::Health);
    }
    if service != sluice_proto::INFERENCE_SERVICE_NAME {
        return None;
    }
    Some(match method {
        "ServerLive" | "ServerReady" | "ModelReady" => Scope::Health,
        "ServerMetadata" | "ModelMetadata" => Scope::Metadata,
        "ModelInfer" | "ModelStreamInfer" => Scope::Inference,
        "ModelConfig" => Scope::ModelConfig,
        "ModelStatistics" => Scope::Statistics,
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => {
            Scope::ModelRepository
        }
        "TraceSetting" => Scope::Trace,
        "LogSettings" => Scope::Logging,
        m if m.starts_with("SystemSharedMemory") || m.starts_with("CudaSharedMemory") => {
            Scope::SharedMemory
        }
        _ => return None,
    })
}

fn log_denial(decision: &Decision, path: &str) {
    match decision {
        Decision::Allow => {}
        Decision::Unauthenticated(why) | Decision::Forbidden(why) => {
            tracing::debug!(path, reason = %why, "request refused by the API key check");
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Checks every HTTP request against the policy before the router sees it.
#[derive(Debug, Clone)]
pub struct HttpAuthLayer(pub Arc<AuthPolicy>);

impl<S> tower::Layer<S> for HttpAuthLayer {
    type Service = HttpAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HttpAuth {
            inner,
            policy: Arc::clone(&self.0),
        }
    }
}

/// The service made by [`HttpAuthLayer`].
#[derive(Debug, Clone)]
pub struct HttpAuth<S> {
    inner: S,
    policy: Arc<AuthPolicy>,
}

impl<S, B> tower::Service<Request<B>> for HttpAuth<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let decision = self
            .policy
            .check(http_scope(request.uri().path()), request.headers());
        log_denial(&decision, request.uri().path());
        let (status, message) = match decision {
            Decision::Allow => return Box::pin(self.inner.call(request)),
            Decision::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
            Decision::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        };
        let mut response =
            (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        Box::pin(async move { Ok(response) })
    }
}

/// Checks every gRPC call against the policy before tonic decodes it.
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer(pub Arc<AuthPolicy>);

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            policy: Arc::clone(&self.0),
        }
    }
}

/// The service made by [`GrpcAuthLayer`].
#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    policy: Arc<AuthPolicy>,
}

impl<S, B, R> tower::Service<Request<B>> for GrpcAuth<S>
where
    S: tower::Service<Request<B>, Response = axum::http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let decision = self
            .policy
            .check(grpc_scope(request.uri().path()), request.headers());
        log_denial(&decision, request.uri().path());
        let status = match decision {
            Decision::Allow => return Box::pin(self.inner.call(request)),
            Decision::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Decision::Forbidden(m) => tonic::Status::permission_denied(m),
        };
        let response = status.into_http::<R>();
        Box::pin(async move { Ok(response) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn policy() -> AuthPolicy {
        let keys = parse_keys(
            "# name scopes key\nclient inference,metadata 0123456789abcdef-client\n\
             admin * 0123456789abcdef-admin\n",
            "test",
        )
        .unwrap();
        AuthPolicy::new(&keys, &[], Scopes::NONE.with(Scope::Health))
    }

    #[test]
    fn scopes_are_enforced_per_key() {
        let p = policy();
        let client = headers(&[("authorization", "Bearer 0123456789abcdef-client")]);
        let admin = headers(&[("authorization", "bearer 0123456789abcdef-admin")]);
        assert_eq!(p.check(Some(Scope::Inference), &client), Decision::Allow);
        assert!(matches!(
            p.check(Some(Scope::ModelRepository), &client),
            Decision::Forbidden(m) if m.contains("'client'") && m.contains("model-repository")
        ));
        for s in Scope::ALL {
            assert_eq!(p.check(Some(s), &admin), Decision::Allow);
        }
        assert_eq!(
            p.check(Some(Scope::Health), &HeaderMap::new()),
            Decision::Allow
        );
        assert!(matches!(
            p.check(Some(Scope::Inference), &HeaderMap::new()),
            Decision::Unauthenticated(_)
        ));
        assert!(matches!(
            p.check(None, &HeaderMap::new()),
            Decision::Unauthenticated(_)
        ));
        assert_eq!(p.check(None, &client), Decision::Allow);
    }

    #[test]
    fn wrong_keys_differing_anywhere_are_refused() {
        let p = policy();
        let right = "0123456789abcdef-admin";
        // Keys matching in 0, half and all but the last byte, longer and shorter.
        let mut wrong = vec![
            "X123456789abcdef-admin".to_owned(),
            "0123456789abXXXXXXXXXX".to_owned(),
            "0123456789abcdef-admiX".to_owned(),
            format!("{right}x"),
            right[..right.len() - 1].to_owned(),
            String::new(),
        ];
        wrong.push(right.to_uppercase());
        for w in &wrong {
            let h = headers(&[("authorization", &format!("Bearer {w}"))]);
            assert!(
                matches!(
                    p.check(Some(Scope::Metadata), &h),
                    Decision::Unauthenticated(_)
                ),
                "{w:?} was accepted"
            );
        }
        let basic = headers(&[("authorization", "Basic YWRtaW46YWRtaW4=")]);
        assert!(matches!(
            p.check(Some(Scope::Metadata), &basic),
            Decision::Unauthenticated(m) if m.contains("Bearer")
        ));
    }

    #[test]
    fn comparison_visits_every_key() {
        // The constant-time search finds a key wherever it is in the list, and the
        // first and last positions take the same path through the loop.
        let digests: Vec<Digest> = (0..5u8).map(|i| digest(&[i; 20])).collect();
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(find(d, digests.iter().copied()), Some(i));
        }
        assert_eq!(find(&digest(b"other"), digests.iter().copied()), None);
    }

    #[test]
    fn triton_restrictions_keep_other_categories_open() {
        let r = parse_restriction("model-repository,logging:admin-key=admin-value").unwrap();
        let p = AuthPolicy::new(&[], &[r], Scopes::NONE);
        let ok = headers(&[("admin-key", "admin-value")]);
        let bad = headers(&[("admin-key", "admin-valuX")]);
        assert_eq!(
            p.check(Some(Scope::Inference), &HeaderMap::new()),
            Decision::Allow
        );
        assert_eq!(p.check(None, &HeaderMap::new()), Decision::Allow);
        assert_eq!(p.check(Some(Scope::ModelRepository), &ok), Decision::Allow);
        assert_eq!(p.check(Some(Scope::Logging), &ok), Decision::Allow);
        assert!(matches!(
            p.check(Some(Scope::ModelRepository), &bad),
            Decision::Unauthenticated(_)
        ));
        assert!(parse_restriction("model-repository").is_err());
        assert!(parse_restriction("nope:a=b").is_err());
        assert!(parse_restriction(":a=b").is_err());
    }

    #[test]
    fn key_files_are_validated_without_echoing_secrets() {
        let short = parse_keys("a inference short", "f").unwrap_err();
        assert!(!short.contains("short "), "{short}");
        assert!(parse_keys("a inference", "f").is_err());
        assert!(parse_keys("a bogus 0123456789abcdef0", "f").is_err());
        let twice = parse_keys("a * 0123456789abcdef0;b * 0123456789abcdef0", "f").unwrap_err();
        assert!(!twice.contains("0123456789abcdef0"), "{twice}");
        let debug = format!("{:?}", parse_keys("a * 0123456789abcdef0", "f").unwrap());
        assert!(!debug.contains("0123456789abcdef0"), "{debug}");
    }

    #[test]
    fn endpoints_map_to_triton_categories() {
        assert_eq!(http_scope("/v2"), Some(Scope::Metadata));
        assert_eq!(http_scope("/v2/health/ready"), Some(Scope::Health));
        assert_eq!(http_scope("/v2/models/m"), Some(Scope::Metadata));
        assert_eq!(http_scope("/v2/models/m/versions/1"), Some(Scope::Metadata));
        assert_eq!(http_scope("/v2/models/m/ready"), Some(Scope::Health));
        assert_eq!(
            http_scope("/v2/models/m/versions/1/infer"),
            Some(Scope::Inference)
        );
        assert_eq!(http_scope("/v2/models/m/config"), Some(Scope::ModelConfig));
        assert_eq!(http_scope("/v2/models/stats"), Some(Scope::Statistics));
        assert_eq!(
            http_scope("/v2/models/m/versions/2/stats"),
            Some(Scope::Statistics)
        );
        assert_eq!(
            http_scope("/v2/repository/index"),
            Some(Scope::ModelRepository)
        );
        assert_eq!(http_scope("/v2/logging"), Some(Scope::Logging));
        assert_eq!(http_scope("/v2/trace/setting"), Some(Scope::Trace));
        assert_eq!(
            http_scope("/v2/systemsharedmemory/status"),
            Some(Scope::SharedMemory)
        );
        assert_eq!(http_scope("/v3"), None);
        assert_eq!(http_scope("/v2/models/m/nope"), None);
        let g = |m: &str| grpc_scope(&format!("/inference.GRPCInferenceService/{m}"));
        assert_eq!(g("ModelInfer"), Some(Scope::Inference));
        assert_eq!(g("ModelStreamInfer"), Some(Scope::Inference));
        assert_eq!(g("ServerReady"), Some(Scope::Health));
        assert_eq!(g("RepositoryModelLoad"), Some(Scope::ModelRepository));
        assert_eq!(g("SystemSharedMemoryStatus"), Some(Scope::SharedMemory));
        assert_eq!(g("LogSettings"), Some(Scope::Logging));
        assert_eq!(g("Bogus"), None);
        assert_eq!(
            grpc_scope("/grpc.health.v1.Health/Check"),
            Some(Scope::Health)
        );
    }
}
