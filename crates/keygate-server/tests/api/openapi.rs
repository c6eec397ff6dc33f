//! `/openapi.json` is generated from the same list as the router: every documented
//! operation is answered by a handler, every method the router answers on a documented path
//! is documented, the API's routes are all there, path parameters are declared, error
//! answers match `ErrorBody`, and the document is valid OpenAPI 3.1
//! (openapi-spec-validator, installed by scripts/install-deps).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn, TestApp};

/// The admin API as its users know it (README, SPEC): path templates and methods.
const API: &[(&str, &[&str])] = &[
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
    ("/v1/accounts", &["get", "post"]),
    ("/v1/accounts/{id}", &["get", "patch"]),
    ("/v1/api-keys", &["get", "post"]),
    ("/v1/api-keys/import", &["post"]),
    ("/v1/api-keys/{id}", &["get", "patch"]),
    ("/v1/api-keys/{id}/revoke", &["post"]),
    ("/v1/api-keys/{id}/rotate", &["post"]),
    ("/v1/api-keys/{id}/usage", &["get"]),
    ("/v1/api-keys/{id}/permission-usage", &["get"]),
    ("/v1/audit-log", &["get"]),
    ("/v1/leaks", &["post"]),
    ("/v1/leaks/github", &["post"]),
    ("/v1/api-key-info", &["get"]),
    ("/v1/verify", &["post"]),
    ("/v1/key-changes", &["get"]),
    ("/v1/portal-sessions", &["post"]),
    ("/v1/tokens", &["post"]),
    ("/.well-known/jwks.json", &["get"]),
    ("/v1/auth", FORWARD_AUTH_METHODS),
    ("/v1/auth/{path}", FORWARD_AUTH_METHODS),
    ("/v1/webhook-endpoints", &["get", "post"]),
    ("/v1/webhook-endpoints/{id}", &["get", "patch", "delete"]),
    ("/v1/webhook-endpoints/{id}/rotate-secret", &["post"]),
    ("/v1/webhook-endpoints/{id}/deliveries", &["get"]),
    (
        "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
        &["post"],
    ),
];

const FORWARD_AUTH_METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// The methods probed on every path.
const PROBED_METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Documented operations: path template → methods.
fn operations(document: &Value) -> BTreeMap<String, BTreeSet<String>> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = HTTP_METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// A concrete path for a template: ids that exist nowhere, a two-segment sub-path.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "key_0000000000000000")
        .replace("{path}", "api/v1/invoices")
        .replace("{delivery_id}", "dlv_0000000000000000")
}

/// Whether the router has no route or no method for this request ("No such endpoint" and
/// 405 are the router's own answers; a handler's 404 names the record).
async fn router_refuses(app: &TestApp, method: &str, path: &str) -> bool {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    if status != 404 {
        // Not read: `/v1/key-changes` answers a stream that does not end.
        return status == 405;
    }
    let body = response.text().await.unwrap();
    body.contains("No such endpoint")
}

#[tokio::test]
async fn the_document_lists_the_api_and_the_router_answers_exactly_what_it_lists() {
    let app = spawn().await;
    let documented = operations(&document(&app).await);
    let expected: BTreeMap<String, BTreeSet<String>> = API
        .iter()
        .map(|(path, methods)| {
            (
                path.to_string(),
                methods.iter().map(|m| m.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(documented, expected);

    for (template, methods) in &documented {
        let path = concrete(template);
        for method in PROBED_METHODS {
            let refused = router_refuses(&app, method, &path).await;
            let listed = methods.contains(*method);
            assert_eq!(
                refused, !listed,
                "{method} {path}: documented {listed}, yet the router refuses it: {refused}"
            );
        }
    }
    // Forward-auth's sub-path takes any number of segments.
    assert!(!router_refuses(&app, "get", "/v1/auth/a/b/c").await);
    assert!(router_refuses(&app, "get", "/v1/nothing-here").await);
}

#[tokio::test]
async fn every_path_parameter_is_declared_and_required() {
    let app = spawn().await;
    let document = document(&app).await;
    let mut checked = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        let names: Vec<&str> = template
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .collect();
        for method in HTTP_METHODS {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            let declared: Vec<&Value> = operation["parameters"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["in"] == "path").collect())
                .unwrap_or_default();
            let declared_names: BTreeSet<&str> =
                declared.iter().filter_map(|p| p["name"].as_str()).collect();
            assert_eq!(
                declared_names,
                names.iter().copied().collect(),
                "{method} {template}"
            );
            assert!(
                declared.iter().all(|p| p["required"] == true),
                "{method} {template}"
            );
            checked += names.len();
        }
    }
    assert!(checked > 10, "only {checked} path parameters seen");
}

#[tokio::test]
async fn documented_query_parameters_are_accepted() {
    let app = spawn().await;
    let document = document(&app).await;
    for (template, item) in document["paths"].as_object().unwrap() {
        let Some(get) = item.get("get") else { continue };
        for parameter in get["parameters"].as_array().into_iter().flatten() {
            if parameter["in"] != "query" {
                continue;
            }
            let name = parameter["name"].as_str().unwrap();
            let path = format!("{}?{name}=", concrete(template));
            let got = app.admin(Method::GET, &path, None).await;
            assert!(
                !got.body["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("unknown query parameter"),
                "{path} refused a documented parameter: {}",
                got.body
            );
        }
    }
}

#[tokio::test]
async fn error_answers_have_the_documented_error_body() {
    let app = spawn().await;
    let document = document(&app).await;
    let schema = &document["components"]["schemas"]["ErrorBody"];
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["error", "code", "request_id"]));

    let validation = app
        .admin(Method::POST, "/v1/accounts", Some(json!({"name": 5})))
        .await;
    let unauthenticated = app.call(Method::GET, "/v1/accounts", None, None).await;
    for got in [validation, unauthenticated] {
        assert!(got.status.is_client_error());
        let keys: BTreeSet<&str> = got
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(keys.is_subset(&properties), "{}", got.body);
        assert!(required.is_subset(&keys), "{}", got.body);
        // The operation documents this status with the ErrorBody schema.
        let status = got.status.as_str().to_owned();
        let op = &document["paths"]["/v1/accounts"][if got.body["field"].is_null() {
            "get"
        } else {
            "post"
        }];
        assert_eq!(
            op["responses"][&status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{status}"
        );
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_served_from_one_build() {
    let app = spawn().await;
    let first = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let second = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(first, second);

    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
             document = json.load(sys.stdin)\n\
             assert document['openapi'].startswith('3.1.'), document['openapi']\n\
             validate(document, cls=OpenAPIV31SpecValidator)\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps installs openapi-spec-validator)");
    python.stdin.take().unwrap().write_all(&first).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document (scripts/install-deps installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Promises the document makes that schemathesis (scripts/ci/openapi.sh) showed broken once:
/// the plans are this server's, typed query parameters are never read as absent when empty,
/// integer fields take integral numbers written as floats, and a body is an object.
#[tokio::test]
async fn the_server_keeps_the_documents_promises() {
    let app = spawn().await;
    let document = document(&app).await;
    assert_eq!(
        document["components"]["schemas"]["Plan"]["enum"],
        json!(["basic", "pro", "unlimited"])
    );
    assert_eq!(
        document["components"]["schemas"]["CreateAccount"]["properties"]["plan"]["oneOf"][1]
            ["$ref"],
        "#/components/schemas/Plan",
        "{}",
        document["components"]["schemas"]["CreateAccount"]
    );
    // Remote caches read /v1/verify's Cache-Control: the document says what it means.
    let verify_ok = &document["paths"]["/v1/verify"]["post"]["responses"]["200"];
    assert!(
        verify_ok["headers"]["Cache-Control"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("max-age")),
        "{verify_ok}"
    );

    for path in [
        "/v1/api-keys?status=",
        "/v1/api-keys?environment=",
        "/v1/audit-log?before=",
        "/v1/audit-log?to=",
    ] {
        let got = app.admin(Method::GET, path, None).await;
        assert_eq!(got.status, 400, "{path}: {}", got.body);
        assert_eq!(got.body["code"], "validation_error", "{path}");
    }
    // Empty text filters are still "no filter".
    let got = app.admin(Method::GET, "/v1/api-keys?name=", None).await;
    assert_eq!(got.status, 200, "{}", got.body);

    let account = app
        .admin(Method::POST, "/v1/accounts", Some(json!({"name": "Acme"})))
        .await;
    let array = app
        .admin(
            Method::PATCH,
            &format!("/v1/accounts/{}", account.body["id"].as_str().unwrap()),
            Some(json!([null, null])),
        )
        .await;
    assert_eq!(array.status, 400, "{}", array.body);
    let key = app
        .admin(
            Method::POST,
            "/v1/api-keys",
            Some(json!({"account_id": account.body["id"], "name": "k",
                        "rate_limit": {"requests": 10.0, "per_seconds": 60.0}})),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.body);
    assert_eq!(
        key.body["rate_limit"],
        json!({"requests": 10, "per_seconds": 60})
    );
    let rotated = app
        .admin(
            Method::POST,
            &format!("/v1/api-keys/{}/rotate", key.body["id"].as_str().unwrap()),
            Some(Value::Null),
        )
        .await;
    assert_eq!(
        rotated.status, 201,
        "a null body is no options: {}",
        rotated.body
    );
}
