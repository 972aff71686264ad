//! Admin API tests against a [`MockControl`]: the router in-process, and the real unix and TCP
//! listeners.

use std::{collections::BTreeSet, os::unix::fs::FileTypeExt, path::Path, sync::Arc};

use axum::{
    body::{to_bytes, Body},
    http::{header, HeaderMap, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
    sync::oneshot,
};
use tower::ServiceExt;

use super::{mock::MockControl, *};
use crate::control::{
    AclEntryView, AclList, AclOrigin, AclRequest, ControlError, ReloadOutcome, TopOrder,
};

fn spec() -> Value {
    serde_yaml::from_str(OPENAPI_YAML).expect("openapi.yaml parses")
}

fn app(mock: &Arc<MockControl>) -> Router {
    router(mock.clone(), Arc::new(Metrics::new()))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks an RFC 9457 answer with `status`; returns the problem.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "answer: {}", self.text());
        assert_eq!(self.headers[header::CONTENT_TYPE], PROBLEM_JSON);
        let problem = self.json();
        assert_eq!(problem["status"], status, "{problem}");
        assert_eq!(problem["type"], "about:blank", "{problem}");
        assert!(problem["title"].is_string(), "{problem}");
        assert!(problem["detail"].is_string(), "{problem}");
        problem
    }
}

async fn send(app: &Router, method: &str, uri: &str, json_body: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if json_body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let body = json_body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer {
        status,
        headers,
        body: body.to_vec(),
    }
}

// --- the table and the spec -------------------------------------------------------------

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[test]
fn router_table_and_spec_have_the_same_endpoints() {
    let table: BTreeSet<(String, String)> = endpoints()
        .into_iter()
        .map(|(method, path, _)| (method.as_str().to_lowercase(), path.to_owned()))
        .collect();
    assert_eq!(
        table.len(),
        endpoints().len(),
        "duplicate rows in the table"
    );

    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if HTTP_METHODS.contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    assert_eq!(table, documented);
}

#[test]
fn spec_schemas_match_the_serde_shapes() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    let problem = Problem::from(ControlError::InvalidConfig {
        detail: "bad".into(),
        problems: vec!["line 1, rules: x".into()],
    });
    let samples = [
        ("Status", json!(MockControl::sample_status())),
        (
            "MapOccupancy",
            json!(MockControl::sample_status().maps[0].clone()),
        ),
        (
            "CounterView",
            json!(MockControl::sample_stats().global.clone()),
        ),
        ("RuleView", json!(MockControl::sample_rules()[0].clone())),
        ("TopEntry", json!(MockControl::sample_top()[0].clone())),
        ("AclEntryView", json!(MockControl::sample_acl()[0].clone())),
        (
            "AclRequest",
            json!(AclRequest {
                list: AclList::Deny,
                cidr: "198.18.0.0/24".into(),
                ttl_seconds: Some(60),
            }),
        ),
        ("Stats", json!(MockControl::sample_stats())),
        (
            "ReloadOutcome",
            json!(ReloadOutcome {
                generation: 1,
                rules: 2
            }),
        ),
        ("Problem", json!(problem)),
    ];
    for (name, sample) in samples {
        let schema = &schemas[name];
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has no properties"))
            .keys()
            .map(String::as_str)
            .collect();
        let serialized: BTreeSet<&str> = sample
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(documented, serialized, "schema {name}");
        for required in schema["required"].as_array().unwrap() {
            assert!(
                serialized.contains(required.as_str().unwrap()),
                "{name}.{required} is required but not always serialized"
            );
        }
    }

    // Enum spellings.
    let enum_of =
        |schema: &Value| -> Vec<String> { serde_json::from_value(schema["enum"].clone()).unwrap() };
    let acl = &schemas["AclEntryView"]["properties"];
    for list in [AclList::Allow, AclList::Deny] {
        assert!(enum_of(&acl["list"]).contains(&list.as_str().to_owned()));
        assert_eq!(json!(list), json!(list.as_str()));
    }
    for origin in [AclOrigin::Config, AclOrigin::Api] {
        let spelled = json!(origin).as_str().unwrap().to_owned();
        assert!(enum_of(&acl["origin"]).contains(&spelled), "{spelled}");
    }
    let by = &spec["paths"]["/v1/top"]["get"]["parameters"][0]["schema"];
    for order in [TopOrder::Drops, TopOrder::Rate] {
        let spelled = json!(order).as_str().unwrap().to_owned();
        assert!(enum_of(by).contains(&spelled), "{spelled}");
    }
}

#[tokio::test]
async fn openapi_json_is_the_yaml_document() {
    let answer = send(
        &app(&Arc::new(MockControl::new())),
        "GET",
        "/openapi.json",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(answer.json(), spec());
}

// --- endpoints ---------------------------------------------------------------------------

#[tokio::test]
async fn health_and_readiness() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    let health = send(&app, "GET", "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));

    assert_eq!(
        send(&app, "GET", "/readyz", None).await.status,
        StatusCode::OK
    );
    mock.set_ready(false);
    send(&app, "GET", "/readyz", None).await.problem(503);
    // Liveness does not depend on readiness.
    assert_eq!(
        send(&app, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn read_endpoints_answer_the_controls_data() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    for (path, expected) in [
        ("/v1/status", json!(MockControl::sample_status())),
        ("/v1/rules", json!(MockControl::sample_rules())),
        ("/v1/stats", json!(MockControl::sample_stats())),
        ("/v1/acl", json!(MockControl::sample_acl())),
        ("/v1/top", json!(MockControl::sample_top())),
    ] {
        let answer = send(&app, "GET", path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
        assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(answer.json(), expected, "{path}");
    }
}

#[tokio::test]
async fn top_parameters() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    for uri in ["/v1/top", "/v1/top?by=rate&limit=1000", "/v1/top?limit=1"] {
        assert_eq!(send(&app, "GET", uri, None).await.status, StatusCode::OK);
    }
    assert_eq!(
        mock.calls(),
        ["top(Drops, 20)", "top(Rate, 1000)", "top(Drops, 1)"]
    );

    for uri in [
        "/v1/top?limit=0",
        "/v1/top?limit=1001",
        "/v1/top?limit=-1",
        "/v1/top?limit=many",
        "/v1/top?by=size",
        "/v1/top?lmit=5",
    ] {
        let problem = send(&app, "GET", uri, None).await.problem(400);
        assert!(problem["detail"].as_str().unwrap().len() > 3, "{uri}");
    }
    assert_eq!(
        mock.calls().len(),
        3,
        "a refused request reached the control"
    );
}

#[tokio::test]
async fn acl_add_validates_before_calling_the_control() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);

    let answer = send(
        &app,
        "POST",
        "/v1/acl",
        Some(r#"{"list":"deny","cidr":"198.18.0.0/24","ttl_seconds":600}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!(AclEntryView {
            list: AclList::Deny,
            cidr: "198.18.0.0/24".into(),
            expires_in_seconds: Some(600),
            origin: AclOrigin::Api,
        })
    );
    let ok = [
        r#"{"list":"allow","cidr":"10.0.0.1"}"#,
        r#"{"list":"deny","cidr":"2001:db8::/32","ttl_seconds":null}"#,
        r#"{"list":"deny","cidr":"198.18.0.1","ttl_seconds":315360000}"#,
    ];
    for body in ok {
        let answer = send(&app, "POST", "/v1/acl", Some(body)).await;
        assert_eq!(answer.status, StatusCode::OK, "{body}: {}", answer.text());
    }
    let calls_before = mock.calls();
    assert_eq!(calls_before.len(), 4);
    assert_eq!(calls_before[0], "acl_add(deny, 198.18.0.0/24, Some(600))");

    for (body, why) in [
        (r#"{"list":"deny","cidr":"#, "malformed JSON"),
        (r#"[1, 2]"#, "not an object"),
        (
            r#"{"list":"deny","cidr":"1.2.3.4","ttl":5}"#,
            "unknown field",
        ),
        (r#"{"list":"grey","cidr":"1.2.3.4"}"#, "unknown list"),
        (r#"{"list":"deny"}"#, "missing cidr"),
        (
            r#"{"list":"deny","cidr":"1.2.3.4","ttl_seconds":0}"#,
            "ttl 0",
        ),
        (
            r#"{"list":"deny","cidr":"1.2.3.4","ttl_seconds":315360001}"#,
            "ttl above ten years",
        ),
        (
            r#"{"list":"deny","cidr":"1.2.3.4","ttl_seconds":-5}"#,
            "negative ttl",
        ),
        (
            r#"{"list":"allow","cidr":"1.2.3.4","ttl_seconds":60}"#,
            "ttl on an allow entry",
        ),
    ] {
        let answer = send(&app, "POST", "/v1/acl", Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{why}: {}",
            answer.text()
        );
        answer.problem(400);
    }

    // No JSON content type.
    let request = Request::post("/v1/acl")
        .body(Body::from(r#"{"list":"allow","cidr":"10.0.0.1"}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);

    assert_eq!(
        mock.calls(),
        calls_before,
        "a refused request reached the control"
    );
}

#[tokio::test]
async fn acl_remove_decodes_the_path() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    for uri in [
        "/v1/acl/deny/198.18.0.0_24",
        "/v1/acl/allow/2001:db8::_32",
        "/v1/acl/deny/192.0.2.1",
    ] {
        let answer = send(&app, "DELETE", uri, None).await;
        assert_eq!(
            answer.status,
            StatusCode::NO_CONTENT,
            "{uri}: {}",
            answer.text()
        );
        assert!(answer.body.is_empty());
    }
    assert_eq!(
        mock.calls(),
        [
            "acl_remove(deny, 198.18.0.0/24)",
            "acl_remove(allow, 2001:db8::/32)",
            "acl_remove(deny, 192.0.2.1)",
        ]
    );

    let problem = send(&app, "DELETE", "/v1/acl/grey/198.18.0.0_24", None)
        .await
        .problem(400);
    assert!(problem["detail"].as_str().unwrap().contains("grey"));
    assert_eq!(
        mock.calls().len(),
        3,
        "a refused request reached the control"
    );
}

#[tokio::test]
async fn reload_and_detach() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    let reload = send(&app, "POST", "/v1/reload", None).await;
    assert_eq!(reload.status, StatusCode::OK);
    assert_eq!(reload.json(), json!({"generation": 3, "rules": 2}));
    let detach = send(&app, "POST", "/v1/detach", None).await;
    assert_eq!(detach.status, StatusCode::NO_CONTENT);
    assert_eq!(mock.calls(), ["reload", "detach"]);
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_problems() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    send(&app, "GET", "/v1/nope", None).await.problem(404);
    send(&app, "GET", "/v1/acl/deny", None).await.problem(404);

    let answer = send(&app, "DELETE", "/v1/status", None).await;
    answer.problem(405);
    assert_eq!(answer.headers[header::ALLOW], "GET,HEAD");
    let answer = send(&app, "PUT", "/v1/acl", None).await;
    answer.problem(405);
    assert_eq!(answer.headers[header::ALLOW], "GET,HEAD,POST");
    send(&app, "GET", "/v1/reload", None).await.problem(405);
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn control_errors_map_to_statuses() {
    let cases: [(fn() -> ControlError, u16); 4] = [
        (|| ControlError::BadRequest("bad cidr".into()), 400),
        (|| ControlError::NotFound("no such entry".into()), 404),
        (
            || ControlError::InvalidConfig {
                detail: "2 problems".into(),
                problems: vec!["a".into(), "b".into()],
            },
            422,
        ),
        (|| ControlError::Internal("map gone".into()), 500),
    ];
    for (error, status) in cases {
        let mock = Arc::new(MockControl::new());
        mock.fail_with(error);
        let app = app(&mock);
        for (method, uri) in [
            ("GET", "/v1/status"),
            ("POST", "/v1/reload"),
            ("DELETE", "/v1/acl/deny/1.2.3.4"),
        ] {
            let problem = send(&app, method, uri, None).await.problem(status);
            assert_eq!(problem["detail"], error().to_string());
            if status == 422 {
                assert_eq!(problem["problems"], json!(["a", "b"]));
            } else {
                assert!(problem.get("problems").is_none(), "{problem}");
            }
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let mock = Arc::new(MockControl::new());
    let app = app(&mock);
    send(&app, "DELETE", "/v1/acl/deny/198.18.0.0_24", None).await;
    send(&app, "DELETE", "/v1/acl/deny/198.18.1.0_24", None).await;
    send(&app, "GET", "/no/such/path", None).await;
    send(&app, "DELETE", "/v1/status", None).await;

    let answer = send(&app, "GET", "/metrics", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let text = answer.text();
    for line in [
        r#"throttle_admin_requests_total{code="204",route="/v1/acl/{list}/{cidr}"} 2"#,
        r#"throttle_admin_requests_total{code="404",route="unmatched"} 1"#,
        r#"throttle_admin_requests_total{code="405",route="/v1/status"} 1"#,
        "throttle_up 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(!text.contains("198.18"), "a raw path leaked into a label");
}

#[tokio::test]
async fn every_answer_has_a_request_id() {
    let app = app(&Arc::new(MockControl::new()));
    let first = send(&app, "GET", "/healthz", None).await;
    let second = send(&app, "GET", "/nope", None).await;
    let id = |a: &Answer| -> u64 {
        a.headers[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_ne!(id(&first), id(&second));
}

// --- listeners ---------------------------------------------------------------------------

struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on its own connection, read to the end.
async fn raw_request(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> RawAnswer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra_headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    RawAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn tcp_listener_requires_the_bearer_token() {
    let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_tcp_listener(
        listener,
        "s3cret-token".into(),
        app(&Arc::new(MockControl::new())),
        async {
            let _ = stopped.await;
        },
    ));
    let connect = || async { TcpStream::connect(addr).await.unwrap() };

    for (path, headers, why) in [
        ("/v1/status", "", "no Authorization"),
        ("/healthz", "", "health needs the token too"),
        ("/no/such/path", "", "nor does a 404 answer without it"),
        (
            "/v1/status",
            "Authorization: Bearer s3cret-tokeN\r\n",
            "wrong token",
        ),
        (
            "/v1/status",
            "Authorization: Bearer s3cret-token-and-more\r\n",
            "longer token",
        ),
        (
            "/v1/status",
            "Authorization: Basic s3cret-token\r\n",
            "wrong scheme",
        ),
    ] {
        let answer = raw_request(connect().await, "GET", path, headers).await;
        assert_eq!(answer.status, 401, "{why}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some(PROBLEM_JSON), "{why}");
        assert!(
            answer
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{why}: {}",
            answer.head
        );
        let problem: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(problem["status"], 401);
    }

    for scheme in ["Bearer", "bearer"] {
        let answer = raw_request(
            connect().await,
            "GET",
            "/v1/status",
            &format!("Authorization: {scheme} s3cret-token\r\n"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let status: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(status, json!(MockControl::sample_status()));
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn tcp_refuses_an_empty_or_unsendable_token() {
    for token in ["", "two words", "line\nbreak"] {
        let result = serve_tcp(
            "127.0.0.1:0".parse().unwrap(),
            token.into(),
            app(&Arc::new(MockControl::new())),
            async {},
        )
        .await;
        assert!(result.is_err(), "token {token:?} accepted");
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn unix_socket_is_0600_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let path = run.join("admin.sock");

    let listener = bind_unix(&path).unwrap();
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&run), 0o755);
    // The private staging directory is gone.
    let entries: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["admin.sock"]);

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_unix_listener(
        listener,
        app(&Arc::new(MockControl::new())),
        async {
            let _ = stopped.await;
        },
    ));
    let answer = raw_request(
        UnixStream::connect(&path).await.unwrap(),
        "GET",
        "/healthz",
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, r#"{"status":"ok"}"#);
    // No token on the socket.
    let answer = raw_request(
        UnixStream::connect(&path).await.unwrap(),
        "GET",
        "/v1/status",
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_unix_binds_then_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    serve_unix(&path, app(&Arc::new(MockControl::new())), async {})
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn unix_socket_replaces_only_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");

    // Stale: its listener is gone, the file is left.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = bind_unix(&path).expect("a stale socket is replaced");

    // Live: another process (here, `live`) serves on it.
    let error = bind_unix(&path).unwrap_err().to_string();
    assert!(error.contains("another process"), "{error}");
    drop(live);

    // Not a socket.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let error = bind_unix(&file).unwrap_err().to_string();
    assert!(error.contains("not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
