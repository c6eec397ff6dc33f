//! JSON request bodies: the content type checked, the size bounded, and a type error
//! reported with the field it is in.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// A JSON body of type `T`. An empty body is `T::default()` when `T: Default` is wanted:
/// see [`OptionalJson`].
pub struct Json<T>(pub T);

/// A JSON body that may be absent (empty): then `T::default()`.
pub struct OptionalJson<T>(pub T);

fn is_json(request: &Request) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v.split(';').next().unwrap_or("").trim().as_bytes();
            let suffix = essence.len().checked_sub(5).map(|at| &essence[at..]);
            essence.eq_ignore_ascii_case(b"application/json")
                || suffix.is_some_and(|s| s.eq_ignore_ascii_case(b"+json"))
        })
        .unwrap_or(false)
}

/// The whole body, within the body limit. A body over the limit is 413; one that cannot
/// be read (broken chunked framing, a connection cut mid-body) is 400.
pub(crate) async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| match rejection.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest("The request body could not be read: its framing is broken"),
        })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would read an array as a struct's fields in order; bodies are objects.
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(body_error(
            "the body must be a JSON object, not an array".into(),
        ));
    }
    // A body that reads is read once, without tracking where the reader is (which keeps a
    // copy of every field name); a body that does not is read again to say where it failed.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let typed = serde_path_to_error::deserialize(&mut *de);
    match typed {
        Ok(value) => {
            // Trailing bytes after the JSON value are an error, not something to ignore.
            de.end().map_err(|e| {
                body_error(format!(
                    "the body is not valid JSON: it goes on after its end ({})",
                    position(&e)
                ))
            })?;
            Ok(value)
        }
        // `5.0` is the integer 5 for JSON (and JSON Schema's `integer`), which serde's
        // integer fields refuse: read once more with integral floats made integers.
        Err(e) if e.inner().to_string().contains("floating point") => {
            with_integral_floats(bytes).ok_or_else(|| read_error(e))
        }
        Err(e) => Err(read_error(e)),
    }
}

fn read_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let (field, message) = if inner.is_syntax() || inner.is_eof() {
        (
            "body".to_owned(),
            format!("the body is not valid JSON ({})", position(&inner)),
        )
    } else {
        plain_words(&path, &inner)
    };
    ApiError::from(keygate_engine::Error::Validation { field, message })
}

/// `bytes` read as `T` once its integral floats are integers; `None` if it still does not
/// read (the first error is the one to report). Only reached after a typed read got as
/// far as a float, so the JSON is well-formed up to it and has no repeated key before it.
fn with_integral_floats<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if has_repeated_key(bytes) {
        return None;
    }
    integral_floats_to_integers(&mut value);
    serde_json::from_value(value).ok()
}

/// Whether an object repeats a key: `Value` keeps the last, the typed read refuses it.
fn has_repeated_key(bytes: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(A::Error::custom("repeated key"));
                }
                map.next_value_seed(Unique)?;
            }
            Ok(())
        }
    }
    Unique
        .deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        .is_err()
}

fn body_error(message: String) -> ApiError {
    ApiError::from(keygate_engine::Error::Validation {
        field: "body".to_owned(),
        message,
    })
}

/// `5.0` is the integer 5 for JSON (and JSON Schema's `integer`); serde's integer fields
/// would refuse it as a float.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Within ±2^63 every integral f64 converts exactly.
            if f.fract() == 0.0 && f.abs() < 9.2e18 {
                *value = Value::from(f as i64);
            } else if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) {
                *value = Value::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(&request) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body_bytes(request, state).await?;
        parse(&bytes).map(Json)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let json = is_json(&request);
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        // `null` is no options too, as an absent body is.
        parse::<Option<T>>(&bytes).map(|body| OptionalJson(body.unwrap_or_default()))
    }
}

/// Where in the body a syntax error is, in words.
fn position(e: &serde_json::Error) -> String {
    format!("line {}, column {}", e.line(), e.column())
}

/// The field a type error is about and what is wrong with it, in plain words: serde's
/// "missing field `name` at line 1 column 14" becomes `name`: "name is required".
fn plain_words(path: &str, e: &serde_json::Error) -> (String, String) {
    let text = e.to_string();
    // serde_json appends " at line L column C"; the position means nothing to a reader
    // of a field error.
    let text = text.split(" at line ").next().unwrap_or(&text);
    let named = |prefix: &str| {
        let rest = text.strip_prefix(prefix)?;
        let name = rest.strip_prefix('`')?.split('`').next()?;
        Some((name.to_owned(), rest))
    };
    let within = |name: &str| match path {
        "." | "?" | "" => name.to_owned(),
        parent => format!("{parent}.{name}"),
    };
    if let Some((name, _)) = named("missing field ") {
        let field = within(&name);
        return (field.clone(), format!("{field} is required"));
    }
    if let Some((name, rest)) = named("unknown field ") {
        // The path already ends at the unknown field.
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            within(&name)
        };
        let expected = rest.split_once(", expected ").map(|(_, e)| e);
        let message = match expected {
            Some(known) => format!("{field} is not a field this endpoint takes; it takes {known}"),
            None => format!("{field} is not a field this endpoint takes"),
        };
        return (field, message);
    }
    let field = match path {
        "." | "?" | "" => "body".to_owned(),
        p => p.to_owned(),
    };
    // "invalid type: integer `5`, expected a string" → "name must be a string, not integer `5`"
    if let Some((got, expected)) = text
        .strip_prefix("invalid type: ")
        .or_else(|| text.strip_prefix("invalid value: "))
        .and_then(|t| t.split_once(", expected "))
    {
        return (
            field.clone(),
            format!("{field} must be {expected}, not {got}"),
        );
    }
    (field.clone(), format!("{field} is invalid: {text}"))
}

/// For PATCH bodies: tells "absent" (`None`) from "null" (`Some(None)`).
pub fn nullable<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::{is_json, parse, Request, CONTENT_TYPE};
    use crate::ApiError;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: Option<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limit {
        requests: u32,
    }

    fn error_of(body: &str) -> (String, String) {
        match parse::<Body>(body.as_bytes()) {
            Err(ApiError::Engine(keygate_engine::Error::Validation { field, message })) => {
                (field, message)
            }
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn integral_floats_are_integers_and_arrays_are_not_objects() {
        let body = parse::<Body>(br#"{"name": "a", "limit": {"requests": 5.0}}"#).unwrap();
        assert_eq!(body.limit.map(|l| l.requests), Some(5));
        let (field, message) = error_of(r#"{"name": "a", "limit": {"requests": 5.5}}"#);
        assert_eq!(field, "limit.requests");
        assert!(message.contains("floating point"), "{message}");
        // The second read keeps refusing a repeated key and trailing bytes.
        assert!(
            parse::<Body>(br#"{"name": "a", "name": "b", "limit": {"requests": 1.0}}"#).is_err()
        );
        assert!(parse::<Body>(br#"{"name": "a", "limit": {"requests": 1.0}} x"#).is_err());
        let (field, message) = error_of(r#"["a", null]"#);
        assert_eq!(field, "body");
        assert!(message.contains("not an array"), "{message}");
    }

    #[test]
    fn errors_name_the_field_in_plain_words() {
        assert_eq!(error_of("{}"), ("name".into(), "name is required".into()));
        let (field, message) = error_of(r#"{"name": 5}"#);
        assert_eq!(field, "name");
        assert_eq!(message, "name must be a string, not integer `5`");
        let (field, message) = error_of(r#"{"name": "a", "nmae": 1}"#);
        assert_eq!(field, "nmae");
        assert!(
            message.starts_with("nmae is not a field this endpoint takes"),
            "{message}"
        );
        let (field, message) = error_of(r#"{"name": "a", "limit": {}}"#);
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("limit.requests", "limit.requests is required")
        );
        let (field, message) = error_of(r#"{"name": "a", "limit": {"requests": -1}}"#);
        assert_eq!(field, "limit.requests");
        assert!(message.starts_with("limit.requests must be"), "{message}");
        for (_, message) in [error_of("{}"), error_of(r#"{"name": 5}"#)] {
            assert!(!message.contains("line"), "{message}");
        }
        let (field, message) = error_of(r#"{"name": "#);
        assert_eq!(field, "body");
        assert!(
            message.starts_with("the body is not valid JSON"),
            "{message}"
        );
    }

    #[test]
    fn json_media_types_are_told_apart_in_any_case() {
        let with = |content_type: &str| {
            let request = Request::builder()
                .header(CONTENT_TYPE, content_type)
                .body(axum::body::Body::empty())
                .unwrap();
            is_json(&request)
        };
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;x=y",
            "application/merge-patch+json",
            "APPLICATION/PROBLEM+JSON",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "json",
            "",
            "+jso",
            "application/x-json5",
        ] {
            assert!(!with(no), "{no}");
        }
        let none = Request::builder().body(axum::body::Body::empty()).unwrap();
        assert!(!is_json(&none));
    }
}
