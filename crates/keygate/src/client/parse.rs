//! Value parsers for the verbs' arguments: what clap cannot check by type alone is
//! rejected here, before any request, with exit code 2.

use chrono::{DateTime, SecondsFormat, Utc};

/// Ids go into URL paths: accept only the characters ids are made of.
pub fn parse_id(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("an id is 1-128 letters, digits, '_' or '-' (e.g. key_…, acct_…)".to_owned())
    }
}

/// `REQUESTS/SECONDS`, both positive.
pub fn parse_rate(raw: &str) -> Result<(u64, u64), String> {
    let usage =
        || format!("expected REQUESTS/SECONDS with positive integers, e.g. 100/60, not {raw:?}");
    let (requests, seconds) = raw.split_once('/').ok_or_else(usage)?;
    let requests: u64 = requests.trim().parse().map_err(|_| usage())?;
    let seconds: u64 = seconds.trim().parse().map_err(|_| usage())?;
    if requests == 0 || seconds == 0 {
        return Err(usage());
    }
    Ok((requests, seconds))
}

/// RFC 3339, normalised to UTC.
pub fn parse_time(raw: &str) -> Result<String, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
        .map_err(|e| format!("expected an RFC 3339 time such as 2030-01-31T00:00:00Z ({e})"))
}

/// `key=value` with a non-empty key.
pub fn parse_meta(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, not {raw:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate_limits() {
        assert_eq!(parse_rate("100/60"), Ok((100, 60)));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("0/60").is_err());
        assert!(parse_rate("a/b").is_err());
    }

    #[test]
    fn ids_cannot_escape_the_path() {
        assert!(parse_id("key_01HX-abc").is_ok());
        for bad in ["", "..", "a/b", "key?x=1", "key%2f"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_and_times() {
        assert_eq!(
            parse_meta("team=billing=x"),
            Ok(("team".into(), "billing=x".into()))
        );
        assert!(parse_meta("=x").is_err());
        assert_eq!(
            parse_time("2030-01-31T01:00:00+01:00"),
            Ok("2030-01-31T00:00:00Z".into())
        );
        assert!(parse_time("tomorrow").is_err());
    }
}
