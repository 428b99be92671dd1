//! Triton's logging extension: read and change the log settings while serving,
//! `GET`/`POST v2/logging` over HTTP and `LogSettings` over gRPC.
//!
//! Key decision: the server knows nothing of the log subscriber; the binary hands
//! it a [`LogControl`] (a filter it can read and replace). Triton's settings
//! (`log_info`, `log_warning`, `log_error`, `log_verbose_level`) map onto one
//! global level; `log_filter` (Sluice's addition) takes a full `RUST_LOG`-style
//! filter such as `sluice_scheduler=debug,info`. The rules live here once, and both
//! protocols only convert their value types into [`Setting`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use sluice_core::{Error, Result};
use tracing::level_filters::LevelFilter;

use crate::{ApiError, AppState};

/// The live log filter, as the binary installed it.
pub trait LogControl: Send + Sync {
    /// The filter in force, in `RUST_LOG` syntax.
    fn filter(&self) -> String;
    /// The most verbose level the filter lets through.
    fn max_level(&self) -> LevelFilter;
    /// Replaces the filter; the error says why a filter is invalid.
    fn set_filter(&self, filter: &str) -> std::result::Result<(), String>;
    /// The output format chosen at start-up (`text` or `json`).
    fn format(&self) -> &'static str;
}

/// A shared [`LogControl`].
#[derive(Clone)]
pub struct LogHandle(pub Arc<dyn LogControl>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LogHandle").field(&self.0.filter()).finish()
    }
}

/// One setting's value, whichever the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Bool(bool),
    U32(u32),
    Str(String),
}

/// The settings as they stand, in Triton's names (and `log_filter`).
pub fn current(control: &dyn LogControl) -> Vec<(&'static str, Setting)> {
    let max = control.max_level();
    vec![
        ("log_file", Setting::Str(String::new())),
        ("log_info", Setting::Bool(max >= LevelFilter::INFO)),
        ("log_warning", Setting::Bool(max >= LevelFilter::WARN)),
        ("log_error", Setting::Bool(max >= LevelFilter::ERROR)),
        ("log_verbose_level", Setting::U32(verbose_level(max))),
        ("log_format", Setting::Str(control.format().to_owned())),
        ("log_filter", Setting::Str(control.filter())),
    ]
}

/// Triton's `log_verbose_level` for a level: 0 up to info, 1 debug, 2 trace.
fn verbose_level(max: LevelFilter) -> u32 {
    if max >= LevelFilter::TRACE {
        2
    } else {
        u32::from(max >= LevelFilter::DEBUG)
    }
}

/// Applies `updates` all together, or none of them when one is invalid.
pub fn update(control: &dyn LogControl, updates: Vec<(String, Setting)>) -> Result<()> {
    let max = control.max_level();
    let (mut info, mut warning, mut error) = (
        max >= LevelFilter::INFO,
        max >= LevelFilter::WARN,
        max >= LevelFilter::ERROR,
    );
    let mut verbose = verbose_level(max);
    let mut levels_changed = false;
    let mut filter = None;
    for (key, value) in updates {
        let wrong_type = |wanted: &str| {
            Err(Error::invalid(format!(
                "log setting '{key}' must be {wanted}"
            )))
        };
        match (key.as_str(), value) {
            ("log_file", Setting::Str(file)) => {
                if !file.is_empty() {
                    return Err(Error::unsupported(
                        "log_file: Sluice writes its log to standard error only; leave log_file empty",
                    ));
                }
            }
            ("log_format", Setting::Str(format)) => {
                if format != control.format() {
                    return Err(Error::unsupported(format!(
                        "log_format is chosen at start-up (--log-format); it is '{}'",
                        control.format()
                    )));
                }
            }
            ("log_filter", Setting::Str(f)) => filter = Some(f),
            ("log_info", Setting::Bool(b)) => (info, levels_changed) = (b, true),
            ("log_warning", Setting::Bool(b)) => (warning, levels_changed) = (b, true),
            ("log_error", Setting::Bool(b)) => (error, levels_changed) = (b, true),
            ("log_verbose_level", Setting::U32(n)) => (verbose, levels_changed) = (n, true),
            ("log_file" | "log_format" | "log_filter", _) => return wrong_type("a string"),
            ("log_info" | "log_warning" | "log_error", _) => return wrong_type("a boolean"),
            ("log_verbose_level", _) => return wrong_type("an unsigned integer"),
            (other, _) => {
                return Err(Error::invalid(format!(
                    "unknown log setting '{other}' (known: log_file, log_info, log_warning, \
                     log_error, log_verbose_level, log_format, log_filter)"
                )))
            }
        }
    }
    let directive = match (filter, levels_changed) {
        (Some(_), true) => {
            return Err(Error::invalid(
                "give either log_filter or the level settings (log_info, log_warning, \
                 log_error, log_verbose_level), not both",
            ))
        }
        (Some(f), false) => f,
        (None, true) => match verbose {
            0 if info => "info",
            0 if warning => "warn",
            0 if error => "error",
            0 => "off",
            1 => "debug",
            _ => "trace",
        }
        .to_owned(),
        (None, false) => return Ok(()),
    };
    control
        .set_filter(&directive)
        .map_err(|e| Error::invalid(format!("invalid log filter '{directive}': {e}")))?;
    tracing::info!(filter = %directive, "log settings changed");
    Ok(())
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v2/logging", get(get_settings).post(post_settings))
}

fn control(s: &AppState) -> std::result::Result<&dyn LogControl, ApiError> {
    s.config
        .log_control
        .as_ref()
        .map(|h| h.0.as_ref())
        .ok_or_else(|| {
            ApiError(Error::unavailable(
                "log settings are not available in this server",
            ))
        })
}

fn to_json(settings: Vec<(&'static str, Setting)>) -> Json<Value> {
    let map: Map<String, Value> = settings
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Setting::Bool(b) => Value::Bool(b),
                Setting::U32(n) => Value::from(n),
                Setting::Str(s) => Value::String(s),
            };
            (k.to_owned(), v)
        })
        .collect();
    Json(Value::Object(map))
}

async fn get_settings(
    State(s): State<AppState>,
) -> std::result::Result<impl IntoResponse, ApiError> {
    Ok(to_json(current(control(&s)?)))
}

async fn post_settings(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> std::result::Result<impl IntoResponse, ApiError> {
    let control = control(&s)?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return Err(ApiError::invalid(
            "the body must be a JSON object of log settings, e.g. {\"log_verbose_level\": 1}",
        ));
    };
    let updates = fields
        .into_iter()
        .map(|(k, v)| {
            let setting = match v {
                Value::Bool(b) => Setting::Bool(b),
                Value::String(s) => Setting::Str(s),
                Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => Setting::U32(n),
                    None => {
                        return Err(ApiError::invalid(format!(
                            "log setting '{k}': {n} is not an unsigned 32-bit integer"
                        )))
                    }
                },
                other => {
                    return Err(ApiError::invalid(format!(
                        "log setting '{k}': {other} is not a boolean, number or string"
                    )))
                }
            };
            Ok((k, setting))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    update(control, updates)?;
    Ok(to_json(current(control)))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A filter kept in memory; only plain levels are "valid".
    struct Fake(Mutex<String>);

    impl LogControl for Fake {
        fn filter(&self) -> String {
            self.0.lock().unwrap().clone()
        }
        fn max_level(&self) -> LevelFilter {
            let f = self.filter();
            f.split(',')
                .filter_map(|d| d.rsplit('=').next()?.parse::<LevelFilter>().ok())
                .max()
                .unwrap_or(LevelFilter::OFF)
        }
        fn set_filter(&self, filter: &str) -> std::result::Result<(), String> {
            if filter.contains('!') {
                return Err("bad directive".into());
            }
            *self.0.lock().unwrap() = filter.to_owned();
            Ok(())
        }
        fn format(&self) -> &'static str {
            "text"
        }
    }

    fn get<'a>(s: &'a [(&'static str, Setting)], key: &str) -> &'a Setting {
        &s.iter().find(|(k, _)| *k == key).unwrap().1
    }

    #[test]
    fn triton_levels_map_to_one_filter_and_back() {
        let c = Fake(Mutex::new("info".into()));
        let now = current(&c);
        assert_eq!(get(&now, "log_info"), &Setting::Bool(true));
        assert_eq!(get(&now, "log_verbose_level"), &Setting::U32(0));
        update(&c, vec![("log_verbose_level".into(), Setting::U32(1))]).unwrap();
        assert_eq!(c.filter(), "debug");
        update(
            &c,
            vec![
                ("log_verbose_level".into(), Setting::U32(0)),
                ("log_info".into(), Setting::Bool(false)),
            ],
        )
        .unwrap();
        assert_eq!(c.filter(), "warn");
        let now = current(&c);
        assert_eq!(get(&now, "log_info"), &Setting::Bool(false));
        assert_eq!(get(&now, "log_warning"), &Setting::Bool(true));
        update(
            &c,
            vec![(
                "log_filter".into(),
                Setting::Str("sluice=trace,info".into()),
            )],
        )
        .unwrap();
        assert_eq!(get(&current(&c), "log_verbose_level"), &Setting::U32(2));
    }

    #[test]
    fn bad_updates_change_nothing() {
        let c = Fake(Mutex::new("info".into()));
        for (key, value) in [
            ("log_info", Setting::U32(1)),
            ("log_level", Setting::Bool(true)),
            ("log_file", Setting::Str("/tmp/x.log".into())),
            ("log_format", Setting::Str("ISO8601".into())),
            ("log_filter", Setting::Str("!!".into())),
        ] {
            let err = update(&c, vec![(key.into(), value)]).unwrap_err();
            assert!(
                err.message().contains(key) || err.message().contains("filter"),
                "{err}"
            );
        }
        let both = vec![
            ("log_filter".into(), Setting::Str("debug".into())),
            ("log_info".into(), Setting::Bool(true)),
        ];
        assert!(update(&c, both).is_err());
        assert_eq!(c.filter(), "info");
    }
}
