//! `--model-repository` values: a local folder, or an object-store URL in Triton's forms.

use std::path::PathBuf;

use crate::Error;

/// One `--model-repository` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    Local(PathBuf),
    S3(S3Url),
}

impl RepositoryLocation {
    /// Reads a flag value: `s3://…` is a bucket; another `scheme://` is refused with
    /// the reason; anything else is a local folder.
    pub fn parse(text: &str) -> Result<RepositoryLocation, Error> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(RepositoryLocation::Local(PathBuf::from(text)));
        };
        match scheme {
            "s3" => S3Url::parse(rest).map(RepositoryLocation::S3),
            "gs" | "as" | "az" | "azure" | "abfs" | "abfss" => Err(Error::InvalidUrl(format!(
                "'{scheme}://' repositories are not built into this sluice (only s3:// \
                 and S3-compatible stores; see the README on object-store repositories)"
            ))),
            "hdfs" | "webhdfs" => Err(Error::InvalidUrl(
                "HDFS repositories are not supported; copy the models to an S3-compatible \
                 store or a local folder (see the README on object-store repositories)"
                    .to_owned(),
            )),
            "file" => Ok(RepositoryLocation::Local(PathBuf::from(rest))),
            other => Err(Error::InvalidUrl(format!(
                "unknown repository scheme '{other}://' (expected a folder or s3://BUCKET/PREFIX)"
            ))),
        }
    }
}

/// An S3 repository: `s3://BUCKET[/PREFIX]`, or Triton's form with an endpoint,
/// `s3://[http://|https://]HOST:PORT/BUCKET[/PREFIX]` (plain `HOST:PORT` means HTTP,
/// as in Triton).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// `http(s)://host:port` when the URL names one; else the environment's or AWS's.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix of the repository, without leading or trailing `/` (empty: the bucket root).
    pub prefix: String,
}

impl S3Url {
    /// Parses what follows `s3://`.
    pub fn parse(rest: &str) -> Result<S3Url, Error> {
        let bad =
            |why: &str| Error::InvalidUrl(format!("'s3://{rest}' is not a valid S3 URL: {why}"));
        let (endpoint, path) = if let Some(after) = rest
            .strip_prefix("http://")
            .map(|a| ("http", a))
            .or_else(|| rest.strip_prefix("https://").map(|a| ("https", a)))
        {
            let (scheme, after) = after;
            let (host, path) = after.split_once('/').unwrap_or((after, ""));
            if host.is_empty() {
                return Err(bad("the endpoint has no host"));
            }
            (Some(format!("{scheme}://{host}")), path)
        } else {
            let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
            if first.contains(':') {
                // Bucket names cannot hold ':', so this is Triton's host:port form.
                (Some(format!("http://{first}")), path)
            } else {
                (None, rest)
            }
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let valid_bucket = bucket.len() <= 255
            && bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_bucket {
            return Err(bad(
                "the bucket name may hold only letters, digits, '.', '-' and '_'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|part| part == "." || part == ".." || (part.is_empty() && !prefix.is_empty()))
        {
            return Err(bad("the prefix must not hold '.', '..' or empty parts"));
        }
        Ok(S3Url {
            endpoint,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("s3://")?;
        if let Some(e) = &self.endpoint {
            write!(f, "{e}/")?;
        }
        f.write_str(&self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(text: &str) -> S3Url {
        match RepositoryLocation::parse(text).unwrap() {
            RepositoryLocation::S3(u) => u,
            RepositoryLocation::Local(p) => panic!("{text} read as a folder {p:?}"),
        }
    }

    #[test]
    fn forms() {
        let cases = [
            ("s3://models", None, "models", ""),
            ("s3://models/", None, "models", ""),
            ("s3://models/a/b/", None, "models", "a/b"),
            (
                "s3://127.0.0.1:9000/models/repo",
                Some("http://127.0.0.1:9000"),
                "models",
                "repo",
            ),
            (
                "s3://https://s3.example.com:443/b/p",
                Some("https://s3.example.com:443"),
                "b",
                "p",
            ),
            (
                "s3://http://localhost:8333/b",
                Some("http://localhost:8333"),
                "b",
                "",
            ),
        ];
        for (text, endpoint, bucket, prefix) in cases {
            let u = s3(text);
            assert_eq!(u.endpoint.as_deref(), endpoint, "{text}");
            assert_eq!(u.bucket, bucket, "{text}");
            assert_eq!(u.prefix, prefix, "{text}");
        }
        assert_eq!(
            s3("s3://127.0.0.1:9000/b/p/").to_string(),
            "s3://http://127.0.0.1:9000/b/p"
        );
    }

    #[test]
    fn local_and_refused() {
        assert_eq!(
            RepositoryLocation::parse("examples/models").unwrap(),
            RepositoryLocation::Local("examples/models".into())
        );
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://127.0.0.1:9000/",
            "s3://b/../x",
            "s3://b/a//c",
            "s3://bad bucket/x",
            "gs://bucket/x",
            "hdfs://nn:8020/models",
            "ftp://x/y",
        ] {
            let e = RepositoryLocation::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl(_)), "{bad}: {e}");
        }
    }
}
