//! Rendering answers for people (`field: value` lines, times, lists) and for machines
//! (the server's JSON, re-indented without reordering or rewriting anything).

use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Replaces control characters (newlines, escape sequences) so that a name chosen by
/// someone else cannot break a table or drive the terminal.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One JSON value as a short human string.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => clean(s),
        Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "(none)".to_owned(),
        Value::Object(map) if map.len() == 2 && map.contains_key("per_seconds") => {
            let part = |name: &str| map.get(name).map(text).unwrap_or_default();
            format!(
                "{} requests per {} s",
                part("requests"),
                part("per_seconds")
            )
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), text(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A timestamp for a table cell: `2025-01-31 14:05` (UTC), or `none` when null.
pub fn short_time(value: &Value, none: &str) -> String {
    match value {
        Value::Null => none.to_owned(),
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc).format("%Y-%m-%d %H:%M").to_string(),
            Err(_) => clean(s),
        },
        other => text(other),
    }
}

/// `field: value` lines: the `order` fields first (when present), then any others
/// alphabetically, except `skip` and, always, `key` (the secret).
pub fn fields(object: &Value, order: &[&str], skip: &[&str]) -> String {
    let empty = Map::new();
    let map = object.as_object().unwrap_or(&empty);
    let hidden = |name: &str| name == "key" || skip.contains(&name);
    let mut names: Vec<&str> = order
        .iter()
        .copied()
        .filter(|n| map.contains_key(*n) && !hidden(n))
        .collect();
    let mut rest: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|n| !order.contains(n) && !hidden(n))
        .collect();
    rest.sort_unstable();
    names.extend(rest);
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for name in names {
        let label = format!("{}:", clean(name));
        let value = map.get(name).map(text).unwrap_or_default();
        out.push_str(&format!("{label:<width$} {value}\n", width = width));
    }
    out
}

/// Pretty-prints JSON text as it came: same key order, same numbers, same escapes.
/// (Parsing into a `Value` and printing that would sort keys and normalise numbers.)
pub fn pretty_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut just_opened = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let closing = matches!(c, '}' | ']');
        if just_opened && !closing {
            newline(&mut out, depth);
        }
        if closing {
            depth = depth.saturating_sub(1);
            if !just_opened {
                newline(&mut out, depth);
            }
        }
        just_opened = false;
        match c {
            '{' | '[' => {
                out.push(c);
                depth += 1;
                just_opened = true;
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            '"' => {
                out.push(c);
                in_string = true;
            }
            _ => out.push(c),
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_matches_serde_layout_and_keeps_order() {
        let raw = r#"{"z":1,"a":{"b":[1,2.50,"x, y: {z}\"]"],"e":[],"o":{}},"n":null}"#;
        let expected = "{\n  \"z\": 1,\n  \"a\": {\n    \"b\": [\n      1,\n      2.50,\n      \"x, y: {z}\\\"]\"\n    ],\n    \"e\": [],\n    \"o\": {}\n  },\n  \"n\": null\n}\n";
        assert_eq!(pretty_json(raw), expected);
        let value: Value = serde_json::from_str(raw).expect("test JSON");
        let reparsed: Value = serde_json::from_str(&pretty_json(raw)).expect("output is JSON");
        assert_eq!(value, reparsed);
    }

    #[test]
    fn fields_never_show_the_secret_and_follow_the_order() {
        let obj = serde_json::json!({"key": "kg_live_secret", "name": "n", "id": "key_1", "b": [], "a": null});
        assert_eq!(
            fields(&obj, &["id", "name"], &[]),
            "id:   key_1\nname: n\na:    -\nb:    (none)\n"
        );
    }

    #[test]
    fn times_are_short_utc() {
        let t = Value::String("2025-01-31T15:05:09+01:00".into());
        assert_eq!(short_time(&t, "never"), "2025-01-31 14:05");
        assert_eq!(short_time(&Value::Null, "never"), "never");
    }
}
