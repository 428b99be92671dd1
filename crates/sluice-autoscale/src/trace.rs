//! Arrival traces: request times in seconds from the start, ascending.
//!
//! Generators (Poisson, a two-state Markov-modulated Poisson process for bursts, a
//! diurnal sine, steps) are written as a spec string, e.g. `poisson:rate=50,seconds=600`,
//! so a trace is named on the command line; a recorded trace is a CSV of timestamps.

use crate::rng::Rng;
use crate::{Error, Result};

/// A generated trace.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceSpec {
    /// Constant rate.
    Poisson { rate: f64, seconds: f64 },
    /// Two-state MMPP: rate `low` for exponential sojourns of mean `dwell_low`
    /// seconds, then `high` for sojourns of mean `dwell_high`.
    Mmpp {
        low: f64,
        high: f64,
        dwell_low: f64,
        dwell_high: f64,
        seconds: f64,
    },
    /// `mean × (1 + amplitude × sin(2π t / period − π/2))`: starts at the trough.
    Diurnal {
        mean: f64,
        amplitude: f64,
        period: f64,
        seconds: f64,
    },
    /// Each rate for `every` seconds in turn.
    Step { rates: Vec<f64>, every: f64 },
}

/// The syntax, for error messages and `--help`.
pub const SPEC_HELP: &str =
    "poisson:rate=R,seconds=S | mmpp:low=R,high=R,dwell_low=S,dwell_high=S,seconds=S | \
diurnal:mean=R,amplitude=A,period=S,seconds=S | step:rates=R/R/..,every=S";

impl TraceSpec {
    pub fn parse(text: &str) -> Result<TraceSpec> {
        let bad = |m: String| Error::Trace(format!("{text:?}: {m} (expected {SPEC_HELP})"));
        let (kind, rest) = text.split_once(':').ok_or_else(|| bad("no ':'".into()))?;
        let mut kv = std::collections::BTreeMap::new();
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            kv.insert(k.trim(), v.trim());
        }
        let num = |k: &str| -> Result<f64> {
            let v = kv.get(k).ok_or_else(|| bad(format!("missing {k}")))?;
            let x: f64 = v
                .parse()
                .map_err(|_| bad(format!("{k}={v} is not a number")))?;
            if !(x.is_finite() && x >= 0.0) {
                return Err(bad(format!("{k} must be a finite number >= 0")));
            }
            Ok(x)
        };
        let allowed: &[&str] = match kind {
            "poisson" => &["rate", "seconds"],
            "mmpp" => &["low", "high", "dwell_low", "dwell_high", "seconds"],
            "diurnal" => &["mean", "amplitude", "period", "seconds"],
            "step" => &["rates", "every"],
            _ => return Err(bad(format!("unknown trace kind {kind:?}"))),
        };
        if let Some(k) = kv.keys().find(|k| !allowed.contains(k)) {
            return Err(bad(format!("unknown key {k:?} for {kind}")));
        }
        let spec = match kind {
            "poisson" => TraceSpec::Poisson {
                rate: num("rate")?,
                seconds: num("seconds")?,
            },
            "mmpp" => TraceSpec::Mmpp {
                low: num("low")?,
                high: num("high")?,
                dwell_low: num("dwell_low")?,
                dwell_high: num("dwell_high")?,
                seconds: num("seconds")?,
            },
            "diurnal" => {
                let amplitude = num("amplitude")?;
                if amplitude > 1.0 {
                    return Err(bad("amplitude must be in [0, 1]".into()));
                }
                TraceSpec::Diurnal {
                    mean: num("mean")?,
                    amplitude,
                    period: num("period")?,
                    seconds: num("seconds")?,
                }
            }
            _ => {
                let rates = kv
                    .get("rates")
                    .ok_or_else(|| bad("missing rates".into()))?
                    .split('/')
                    .map(|r| r.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| bad("rates must be numbers >= 0 separated by '/'".into()))?;
                TraceSpec::Step {
                    rates,
                    every: num("every")?,
                }
            }
        };
        if let TraceSpec::Mmpp {
            dwell_low,
            dwell_high,
            ..
        } = spec
        {
            if dwell_low <= 0.0 || dwell_high <= 0.0 {
                return Err(bad("dwell times must be > 0".into()));
            }
        }
        if let TraceSpec::Diurnal { period, .. } = spec {
            if period <= 0.0 {
                return Err(bad("period must be > 0".into()));
            }
        }
        Ok(spec)
    }

    /// Length of the trace in seconds.
    pub fn seconds(&self) -> f64 {
        match self {
            TraceSpec::Poisson { seconds, .. }
            | TraceSpec::Mmpp { seconds, .. }
            | TraceSpec::Diurnal { seconds, .. } => *seconds,
            TraceSpec::Step { rates, every } => rates.len() as f64 * every,
        }
    }

    /// The arrival times (seconds, ascending) for a seed.
    pub fn generate(&self, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        match self {
            TraceSpec::Poisson { rate, seconds } => {
                piecewise(&mut rng, &mut out, 0.0, *seconds, *rate);
            }
            TraceSpec::Step { rates, every } => {
                for (i, r) in rates.iter().enumerate() {
                    let t0 = i as f64 * every;
                    piecewise(&mut rng, &mut out, t0, t0 + every, *r);
                }
            }
            TraceSpec::Mmpp {
                low,
                high,
                dwell_low,
                dwell_high,
                seconds,
            } => {
                let mut t = 0.0;
                let mut high_state = false;
                while t < *seconds {
                    let (rate, dwell) = if high_state {
                        (*high, *dwell_high)
                    } else {
                        (*low, *dwell_low)
                    };
                    let end = (t + rng.exponential(1.0 / dwell)).min(*seconds);
                    piecewise(&mut rng, &mut out, t, end, rate);
                    t = end;
                    high_state = !high_state;
                }
            }
            TraceSpec::Diurnal {
                mean,
                amplitude,
                period,
                seconds,
            } => {
                // thinning (Lewis & Shedler) under the peak rate
                let peak = mean * (1.0 + amplitude);
                if peak <= 0.0 {
                    return out;
                }
                let mut t = rng.exponential(peak);
                while t < *seconds {
                    let rate = diurnal_rate(*mean, *amplitude, *period, t);
                    if rng.uniform() * peak < rate {
                        out.push(t);
                    }
                    t += rng.exponential(peak);
                }
            }
        }
        out
    }
}

/// The diurnal trace's rate at `t`.
pub fn diurnal_rate(mean: f64, amplitude: f64, period: f64, t: f64) -> f64 {
    mean * (1.0
        + amplitude * (std::f64::consts::TAU * t / period - std::f64::consts::FRAC_PI_2).sin())
}

fn piecewise(rng: &mut Rng, out: &mut Vec<f64>, from: f64, to: f64, rate: f64) {
    if rate <= 0.0 {
        return;
    }
    let mut t = from + rng.exponential(rate);
    while t < to {
        out.push(t);
        t += rng.exponential(rate);
    }
}

/// A recorded trace: one timestamp (seconds, any origin) per line in the first CSV
/// column; a header line and blank lines are skipped. Times are sorted and shifted so
/// the first request is at 0.
pub fn from_csv(text: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let field = line.split(',').next().unwrap_or("").trim();
        if field.is_empty() {
            continue;
        }
        match field.parse::<f64>() {
            Ok(t) if t.is_finite() => out.push(t),
            Ok(_) => {
                return Err(Error::Trace(format!(
                    "line {}: {field:?} is not a finite time",
                    i + 1
                )))
            }
            Err(_) if i == 0 => {} // header
            Err(_) => {
                return Err(Error::Trace(format!(
                    "line {}: {field:?} is not a number of seconds",
                    i + 1
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Trace("the CSV holds no timestamps".into()));
    }
    out.sort_by(f64::total_cmp);
    let t0 = out[0];
    for t in &mut out {
        *t -= t0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(ts: &[f64], from: f64, to: f64) -> usize {
        ts.iter().filter(|&&t| t >= from && t < to).count()
    }

    #[test]
    fn generators_have_their_rates() {
        let p = TraceSpec::parse("poisson:rate=100,seconds=1000")
            .unwrap()
            .generate(1);
        assert!(
            (p.len() as f64 / 100_000.0 - 1.0).abs() < 0.01,
            "{}",
            p.len()
        );
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        let s = TraceSpec::parse("step:rates=10/200/10,every=100").unwrap();
        assert_eq!(s.seconds(), 300.0);
        let s = s.generate(2);
        assert!((count(&s, 100.0, 200.0) as f64 / 20_000.0 - 1.0).abs() < 0.03);
        assert!((count(&s, 0.0, 100.0) as f64 / 1000.0 - 1.0).abs() < 0.1);
        let d = TraceSpec::parse("diurnal:mean=100,amplitude=0.8,period=1000,seconds=1000")
            .unwrap()
            .generate(3);
        // trough 20/s at t = 0, peak 180/s at t = 500
        assert!((count(&d, 0.0, 20.0) as f64 / 20.0) < 40.0);
        assert!((count(&d, 490.0, 510.0) as f64 / 20.0 - 180.0).abs() < 20.0);
        assert!((d.len() as f64 / 100_000.0 - 1.0).abs() < 0.02);
        // MMPP: mean rate = (low × dwell_low + high × dwell_high) / (dwell_low + dwell_high)
        let m = TraceSpec::parse("mmpp:low=10,high=110,dwell_low=30,dwell_high=10,seconds=20000")
            .unwrap()
            .generate(4);
        let expect = (10.0 * 30.0 + 110.0 * 10.0) / 40.0 * 20000.0;
        assert!(
            (m.len() as f64 / expect - 1.0).abs() < 0.05,
            "{} vs {expect}",
            m.len()
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_syntax() {
        for (t, want) in [
            ("poisson", "no ':'"),
            ("poisson:rate=x,seconds=1", "not a number"),
            ("poisson:rate=1", "missing seconds"),
            ("poisson:rate=1,seconds=1,burst=2", "unknown key"),
            ("wave:rate=1", "unknown trace kind"),
            ("diurnal:mean=1,amplitude=2,period=1,seconds=1", "amplitude"),
            ("step:rates=1/-2,every=1", "rates must be"),
            ("poisson:rate=-1,seconds=1", ">= 0"),
        ] {
            let e = TraceSpec::parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn csv_traces() {
        let t = from_csv("timestamp,model\n100.5,a\n100.0,a\n\n101.0,b\n").unwrap();
        assert_eq!(t, vec![0.0, 0.5, 1.0]);
        assert!(from_csv("t\n")
            .unwrap_err()
            .to_string()
            .contains("no timestamps"));
        assert!(from_csv("1\nx\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
