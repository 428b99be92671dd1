//! One S3 repository: the client, listing its models, and streaming one object to disk.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, ObjectStore, RetryConfig};
use tokio::io::AsyncWriteExt;

use crate::{Error, S3Url};

/// How to reach the stores: the `AWS_*` settings (read from the environment by the
/// binary) and the client's limits.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `AWS_*` variables, e.g. `("AWS_ACCESS_KEY_ID", "...")`; names object_store does
    /// not know are ignored.
    pub aws: Vec<(String, String)>,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time one request (a whole download included) may take.
    pub request_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            aws: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// Removes secret values from texts that may reach logs, errors or the index.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(settings: &StoreSettings) -> Redactor {
        let secret = |name: &str| {
            matches!(
                name,
                "AWS_ACCESS_KEY_ID"
                    | "AWS_SECRET_ACCESS_KEY"
                    | "AWS_SESSION_TOKEN"
                    | "AWS_TOKEN"
                    | "AWS_SSE_CUSTOMER_KEY_BASE64"
            )
        };
        let mut secrets: Vec<String> = settings
            .aws
            .iter()
            .filter(|(k, v)| secret(&k.to_ascii_uppercase()) && v.len() >= 4)
            .map(|(_, v)| v.clone())
            .collect();
        // Longest first, so a secret that contains another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        out
    }
}

/// One object of a model folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectInfo {
    /// The full key in the bucket.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Last modification, milliseconds since the epoch.
    pub modified_ms: i64,
}

/// A model folder as listed: its files by path relative to the folder, or why the
/// folder cannot be used.
pub type ModelListing = Result<BTreeMap<String, ObjectInfo>, String>;

/// The files of a model folder (`base` is its key prefix, ending in `/`), checked:
/// each key a plain relative path under the folder, none larger than
/// `max_object_bytes`, no key both a file and a folder (zero-byte `m/1/` folder
/// markers, as consoles make, are dropped).
pub fn model_files(base: &str, objects: Vec<ObjectInfo>, max_object_bytes: u64) -> ModelListing {
    let mut files = BTreeMap::new();
    for o in objects {
        let Some(rel) = o.key.strip_prefix(base) else {
            continue;
        };
        if rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\\'))
        {
            return Err(format!(
                "key '{}' is not a plain path inside the model folder '{base}'",
                o.key
            ));
        }
        if o.size > max_object_bytes {
            return Err(format!(
                "object '{}' is {} bytes, more than the {max_object_bytes} bytes allowed \
                 (--model-max-object-bytes)",
                o.key, o.size
            ));
        }
        files.insert(rel.to_owned(), o);
    }
    let folders: Vec<String> = files
        .keys()
        .filter(|k| {
            let dir = format!("{k}/");
            files.keys().any(|other| other.starts_with(&dir))
        })
        .cloned()
        .collect();
    for f in folders {
        if files.get(&f).is_some_and(|o| o.size == 0) {
            files.remove(&f);
        } else {
            return Err(format!("'{base}{f}' is both an object and a folder"));
        }
    }
    Ok(files)
}

/// A repository in a bucket.
pub struct Remote {
    url: S3Url,
    store: Arc<dyn ObjectStore>,
    redact: Redactor,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.to_string())
            .finish()
    }
}

/// Is the host of `endpoint` (`scheme://host[:port]`) this machine?
fn is_loopback(endpoint: &str) -> bool {
    let host_port = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Remote {
    /// A client for `url`. Nothing is contacted yet.
    pub fn new(url: S3Url, settings: &StoreSettings) -> Result<Remote, Error> {
        // rustls needs a process-wide crypto provider; `ring` (never aws-lc-rs).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redact = Redactor::new(settings);
        // Client options first: `with_client_options` replaces them whole, including
        // the `allow_http` that the settings below may turn on.
        let mut builder = AmazonS3Builder::new().with_client_options(
            ClientOptions::new()
                .with_connect_timeout(settings.connect_timeout)
                .with_timeout(settings.request_timeout),
        );
        let mut env_endpoint = None;
        let mut allow_http_set = false;
        for (name, value) in &settings.aws {
            let lower = name.to_ascii_lowercase();
            let Ok(key) = lower.parse::<AmazonS3ConfigKey>() else {
                continue;
            };
            if matches!(key, AmazonS3ConfigKey::Endpoint) {
                env_endpoint = Some(value.clone());
            }
            if lower == "aws_allow_http" {
                allow_http_set = true;
            }
            builder = builder.with_config(key, value.clone());
        }
        let endpoint = url.endpoint.clone().or(env_endpoint);
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e.clone());
            // Plain HTTP to this machine, or where the URL itself says so (Triton's
            // `s3://host:port/...` form); elsewhere only with AWS_ALLOW_HTTP=true.
            let plain = e.starts_with("http://");
            if plain && !allow_http_set && (is_loopback(e) || url.endpoint.is_some()) {
                builder = builder.with_allow_http(true);
            }
            if plain && url.endpoint.is_some() && !is_loopback(e) {
                tracing::warn!(repository = %url, "the object store is reached over plain HTTP");
            }
        }
        let has_region = settings.aws.iter().any(|(k, _)| {
            matches!(
                k.to_ascii_uppercase().as_str(),
                "AWS_REGION" | "AWS_DEFAULT_REGION"
            )
        });
        if !has_region {
            builder = builder.with_config(AmazonS3ConfigKey::Region, "us-east-1");
        }
        let store = builder
            .with_bucket_name(url.bucket.clone())
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| Error::Store(format!("{url}: {}", redact.clean(&e.to_string()))))?;
        Ok(Remote {
            url,
            store: Arc::new(store),
            redact,
        })
    }

    /// A repository on any object store (tests use an in-memory one).
    pub fn with_store(url: S3Url, store: Arc<dyn ObjectStore>) -> Remote {
        Remote {
            url,
            store,
            redact: Redactor::default(),
        }
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    fn prefix_path(&self) -> Option<Path> {
        (!self.url.prefix.is_empty()).then(|| Path::from(self.url.prefix.as_str()))
    }

    /// A store error as a text with no secret in it.
    fn describe(&self, what: &str, e: &object_store::Error) -> String {
        let text = match e {
            object_store::Error::NotFound { .. } => format!("{what}: not found ({e})"),
            _ => format!("{what}: {e}"),
        };
        self.redact.clean(&text)
    }

    /// The model folders under the prefix (hidden ones skipped), sorted.
    pub async fn model_names(&self) -> Result<Vec<String>, Error> {
        let listed = self
            .store
            .list_with_delimiter(self.prefix_path().as_ref())
            .await
            .map_err(|e| Error::Store(self.describe(&format!("cannot list {}", self.url), &e)))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The files of one model folder, checked: every key a plain relative path under
    /// the folder, none larger than `max_object_bytes`. A store that cannot be
    /// reached is an `Err`; a folder that cannot be used is an `Ok(Err(reason))`.
    pub async fn list_model(
        &self,
        name: &str,
        max_object_bytes: u64,
    ) -> Result<ModelListing, Error> {
        let folder = match self.prefix_path() {
            Some(p) => p.join(name),
            None => Path::from(name),
        };
        let base = format!("{}/", folder.as_ref());
        let listed: Result<Vec<_>, _> = self.store.list(Some(&folder)).try_collect().await;
        let metas = match listed {
            Ok(m) => m,
            Err(object_store::Error::InvalidPath { source }) => {
                return Ok(Err(self.redact.clean(&format!(
                    "a key under '{base}' is not a plain path inside the model folder \
                     ('.', '..' or an empty part): {source}"
                ))))
            }
            Err(e) => {
                let what = format!("cannot list '{base}' in {}", self.url);
                return Err(Error::Store(self.describe(&what, &e)));
            }
        };
        let objects = metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: m.location.as_ref().to_owned(),
                size: m.size,
                etag: m.e_tag,
                modified_ms: m.last_modified.timestamp_millis(),
            })
            .collect();
        Ok(model_files(&base, objects, max_object_bytes))
    }

    /// Streams one object into `dest` (a new file), checking that it is the object
    /// listed (same ETag, same size) and no larger than listed. Errors name the key.
    pub async fn download(&self, object: &ObjectInfo, dest: &FsPath) -> Result<(), Error> {
        let location = Path::from(object.key.as_str());
        let options = GetOptions {
            if_match: object.etag.clone(),
            ..GetOptions::default()
        };
        let key = &object.key;
        let got = self
            .store
            .get_opts(&location, options)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::Model(format!(
                    "object '{key}' disappeared before it could be downloaded"
                )),
                object_store::Error::Precondition { .. } => Error::Model(format!(
                    "object '{key}' changed after it was listed; it is read again at the next scan"
                )),
                other => Error::Store(self.describe(&format!("cannot download '{key}'"), &other)),
            })?;
        if got.meta.size != object.size || (object.etag.is_some() && got.meta.e_tag != object.etag)
        {
            return Err(Error::Model(format!(
                "object '{key}' changed after it was listed ({} bytes now, {} listed)",
                got.meta.size, object.size
            )));
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| Error::Cache(format!("cannot write '{}': {e}", dest.display())))?;
        let mut stream = got.into_stream();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Error::Model(self.describe(&format!("download of '{key}' broke off"), &e))
            })?;
            written += chunk.len() as u64;
            if written > object.size {
                return Err(Error::Model(format!(
                    "object '{key}' sent more than its listed {} bytes",
                    object.size
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::Cache(format!("cannot write '{}': {e}", dest.display())))?;
        }
        if written != object.size {
            return Err(Error::Model(format!(
                "object '{key}' ended after {written} of {} bytes (removed or rewritten while \
                 downloading?)",
                object.size
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| Error::Cache(format!("cannot write '{}': {e}", dest.display())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn secrets_are_removed() {
        let settings = StoreSettings {
            aws: vec![
                ("AWS_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    "wJalrXUtnFEMI/K7MDENG".into(),
                ),
                ("AWS_REGION".into(), "eu-west-1".into()),
            ],
            ..StoreSettings::default()
        };
        let r = Redactor::new(&settings);
        let text = r.clean("InvalidAccessKeyId AKIDEXAMPLE sig wJalrXUtnFEMI/K7MDENG in eu-west-1");
        assert_eq!(text, "InvalidAccessKeyId *** sig *** in eu-west-1");
    }

    fn obj(key: &str, size: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size,
            etag: Some(format!("\"{key}\"")),
            modified_ms: 0,
        }
    }

    #[test]
    fn model_folder_checks() {
        let base = "repo/m/";
        let ok = model_files(
            base,
            vec![
                obj("repo/m/config.pbtxt", 10),
                // A console's `m/1/` folder marker, as object_store lists it.
                obj("repo/m/1", 0),
                obj("repo/m/1/model.onnx", 100),
            ],
            100,
        )
        .unwrap();
        assert_eq!(
            ok.keys().collect::<Vec<_>>(),
            ["1/model.onnx", "config.pbtxt"]
        );
        let refused = [
            (vec![obj("repo/m/1/../../other/x", 1)], "not a plain path"),
            (vec![obj("repo/m/./1/model.onnx", 1)], "not a plain path"),
            (vec![obj("repo/m/1//model.onnx", 1)], "not a plain path"),
            (
                vec![obj("repo/m/1/model.onnx", 101)],
                "more than the 100 bytes",
            ),
            (
                vec![obj("repo/m/1", 5), obj("repo/m/1/model.onnx", 1)],
                "both an object and a folder",
            ),
        ];
        for (objects, why) in refused {
            let e = model_files(base, objects.clone(), 100).unwrap_err();
            assert!(e.contains(why), "{objects:?}: {e}");
        }
    }

    fn memory_remote() -> (Remote, Arc<object_store::memory::InMemory>) {
        let store = Arc::new(object_store::memory::InMemory::new());
        let url = S3Url {
            endpoint: None,
            bucket: "b".into(),
            prefix: "repo".into(),
        };
        (Remote::with_store(url, store.clone()), store)
    }

    #[tokio::test]
    async fn downloads_are_checked_against_the_listing() {
        let (remote, store) = memory_remote();
        let key = Path::from("repo/m/1/model.onnx");
        store.put(&key, vec![7u8; 1000].into()).await.unwrap();
        assert_eq!(remote.model_names().await.unwrap(), ["m"]);
        let files = remote.list_model("m", 1 << 20).await.unwrap().unwrap();
        let object = files["1/model.onnx"].clone();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a");
        remote.download(&object, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 1000]);

        // Rewritten after the listing: the ETag no longer matches.
        store.put(&key, vec![8u8; 1000].into()).await.unwrap();
        let e = remote
            .download(&object, &dir.path().join("b"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Model(_)) && e.to_string().contains("changed"),
            "{e}"
        );

        // Gone after the listing.
        store.delete(&key).await.unwrap();
        let e = remote
            .download(&object, &dir.path().join("c"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Model(_)), "{e}");
        assert!(e.to_string().contains("1/model.onnx"), "{e}");

        // Too large for the cap: the model is refused, not the listing.
        store.put(&key, vec![1u8; 1000].into()).await.unwrap();
        let listing = remote.list_model("m", 999).await.unwrap();
        assert!(listing.unwrap_err().contains("--model-max-object-bytes"));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:8333"));
        assert!(is_loopback("http://localhost:9000"));
        assert!(is_loopback("http://[::1]:9000"));
        assert!(!is_loopback("http://10.0.0.5:9000"));
        assert!(!is_loopback("https://s3.amazonaws.com"));
    }
}
