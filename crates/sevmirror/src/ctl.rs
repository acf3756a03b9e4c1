//! `sevmirror ctl`: run one QMP command against a VM's control socket, for scripts.
//!
//! Success: the `return` value as pretty JSON on stdout, exit 0. A QMP error:
//! `sevmirror: CLASS: desc` on stderr, exit 1. A connection problem: one line from
//! `main`, exit 1. Malformed `ARGS-JSON` or `--timeout`: a usage error from clap, exit 2.

use qmp::{ClientError, QmpClient};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Connects to `api`, runs `command` with `args` and prints the result; returns the exit
/// code. Errors are connection or protocol failures (exit 1 via `main`).
pub fn run(
    api: &Path,
    timeout: Duration,
    command: &str,
    args: Option<Map<String, Value>>,
) -> anyhow::Result<i32> {
    let mut client = QmpClient::connect(api, Some(timeout))?;
    let args = args.map_or(Value::Null, Value::Object);
    match client.execute(command, args) {
        Ok(ret) => {
            let text = serde_json::to_string_pretty(&ret)?;
            writeln!(std::io::stdout().lock(), "{text}")?;
            Ok(0)
        }
        Err(ClientError::Qmp(e)) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "sevmirror: {}: {}",
                e.class,
                e.desc
            );
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// clap value parser for `ARGS-JSON`: one JSON object.
pub fn parse_args_json(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(r#"expected a JSON object, e.g. '{"uri":"tcp:127.0.0.1:4444"}'"#.into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// clap value parser for `--timeout SECS`: a positive number of seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a positive number of seconds, got {s:?}");
    let secs: f64 = s.trim().parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_json_must_be_an_object() {
        let m = parse_args_json(r#"{"uri":"tcp:127.0.0.1:4444"}"#).unwrap();
        assert_eq!(m["uri"], "tcp:127.0.0.1:4444");
        assert!(parse_args_json("{}").unwrap().is_empty());
        assert!(parse_args_json("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_args_json(r#""uri""#).is_err());
        assert!(parse_args_json("{uri:1}")
            .unwrap_err()
            .starts_with("not valid JSON"));
        assert!(parse_args_json("").is_err());
    }

    #[test]
    fn timeout_is_positive_seconds() {
        assert_eq!(parse_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timeout("0.25").unwrap(), Duration::from_millis(250));
        for bad in ["0", "-1", "x", "", "inf", "NaN", "1e400"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
