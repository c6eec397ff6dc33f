//! JSON request bodies: the content type checked, the size bounded, and a type error
//! reported with the field it is in.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde::Deserialize;

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
            let essence = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        })
        .unwrap_or(false)
}

/// The whole body, within the body limit. A body over the limit is 413; one that cannot
/// be read (broken chunked framing, a connection cut mid-body) is 400.
async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| match rejection.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest("The request body could not be read: its framing is broken"),
        })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let mut value = serde_json::Value::deserialize(&mut *de)
        .map_err(|e| body_error(format!("the body is not valid JSON ({})", position(&e))))?;
    // Trailing bytes after the JSON value are an error, not something to ignore.
    de.end().map_err(|e| {
        body_error(format!(
            "the body is not valid JSON: it goes on after its end ({})",
            position(&e)
        ))
    })?;
    // serde would read an array as a struct's fields in order; bodies are objects.
    if value.is_array() {
        return Err(body_error(
            "the body must be a JSON object, not an array".into(),
        ));
    }
    integral_floats_to_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let (field, message) = plain_words(&path, &e.into_inner());
        ApiError::from(keygate_engine::Error::Validation { field, message })
    })
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
            } else if f.fract() == 0.0 && f >= 0.0 && f < 1.8e19 {
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
    use super::parse;
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
}
