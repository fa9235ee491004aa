//! The REST API in process (`tower::ServiceExt::oneshot`, no socket) on a one-controller
//! cluster: the bad-input table (reliability.md §4.2), conditional updates, blocking queries
//! and server-sent events.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use flotilla_api::cluster::TokenRole;
use flotilla_controller::testing::TestCluster;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

struct Api {
    _dir: TempDir,
    cluster: TestCluster,
    router: Router,
    /// `Authorization` value of an admin token.
    bearer: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn api() -> Result<Api> {
    let dir = TempDir::new()?;
    let cluster = TestCluster::new(dir.path());
    cluster.start_voters(1).await?;
    let node = cluster.node(1);
    node.wait_for_leader(Duration::from_secs(10)).await?;
    let admin = flotilla_controller::auth::create_token(
        &node,
        TokenRole::Admin,
        None,
        "test".into(),
        now_ms(),
    )
    .await?;
    let router = flotilla_controller::api::router(node);
    Ok(Api {
        _dir: dir,
        cluster,
        router,
        bearer: format!("Bearer {}", admin.token),
    })
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn index(&self) -> u64 {
        self.headers
            .get("x-flotilla-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Reply> {
        let mut req = Request::builder().method(method).uri(uri);
        // An explicit authorization header replaces the admin token; "-" sends none.
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.header("authorization", &self.bearer);
        }
        for (k, v) in headers {
            if !(k.eq_ignore_ascii_case("authorization") && *v == "-") {
                req = req.header(*k, *v);
            }
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body.unwrap_or_else(Body::empty))?)
            .await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{uri}: body is not json: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn json(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Result<Reply> {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.call(method, uri, &h, Some(Body::from(body.to_string())))
            .await
    }

    async fn get(&self, uri: &str) -> Result<Reply> {
        self.call(Method::GET, uri, &[], None).await
    }

    fn applied(&self) -> u64 {
        self.cluster.node(1).applied_index()
    }
}

/// One bad request and what it must produce.
struct Case {
    name: &'static str,
    method: Method,
    uri: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    uri: &str,
    body: &str,
    status: u16,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        uri: uri.to_owned(),
        headers: vec![("content-type", "application/json".to_owned())],
        body: Some(body.as_bytes().to_vec()),
        status: StatusCode::from_u16(status).unwrap(),
        field,
    }
}

fn put(name: &'static str, body: &str, status: u16, field: Option<&'static str>) -> Case {
    case(name, Method::PUT, "/v1/workloads/web", body, status, field)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bad_input_is_refused_with_a_problem_naming_the_field_and_changes_nothing() -> Result<()>
{
    let api = api().await?;
    let created = api
        .json(
            Method::PUT,
            "/v1/workloads/web",
            &[],
            json!({"image": "busybox", "replicas": 2}),
        )
        .await?;
    ensure!(
        created.status == StatusCode::CREATED,
        "create: {} {}",
        created.status,
        created.body
    );
    let revision = created.body["revision"].as_u64().context("revision")?;
    api.json(
        Method::PUT,
        "/v1/services/web",
        &[],
        json!({"workload": "web"}),
    )
    .await?;

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{{\"v\": {deep}}}");
    let big = format!("{{\"image\": \"{}\"}}", "x".repeat(2 << 20));
    let mut cases = vec![
        put("malformed json", r#"{"image": "x","#, 400, Some("body")),
        put("trailing garbage", r#"{"image": "x"} x"#, 400, Some("body")),
        put("wrong type", r#"{"image": 5}"#, 422, Some("image")),
        put(
            "null for required",
            r#"{"image": null}"#,
            422,
            Some("image"),
        ),
        put("missing required", r#"{"replicas": 1}"#, 422, Some("image")),
        put(
            "unknown field",
            r#"{"image": "x", "replicaz": 3}"#,
            422,
            Some("replicaz"),
        ),
        put(
            "unknown nested field",
            r#"{"image": "x", "resources": {"cpu": 1}}"#,
            422,
            Some("resources.cpu"),
        ),
        put(
            "unknown field in array",
            r#"{"image": "x", "ports": [{"name": "http", "containerPort": 80, "hostPort": 1}]}"#,
            422,
            Some("ports[0].hostPort"),
        ),
        put(
            "negative replicas",
            r#"{"image": "x", "replicas": -1}"#,
            422,
            Some("replicas"),
        ),
        put(
            "replicas overflow u32",
            r#"{"image": "x", "replicas": 99999999999}"#,
            422,
            Some("replicas"),
        ),
        put(
            "replicas above the maximum",
            r#"{"image": "x", "replicas": 20000}"#,
            422,
            Some("replicas"),
        ),
        put(
            "memory overflows u64",
            r#"{"image": "x", "resources": {"memoryBytes": 1e30}}"#,
            422,
            Some("resources.memoryBytes"),
        ),
        put(
            "memory above the maximum",
            r#"{"image": "x", "resources": {"memoryBytes": 18446744073709551615}}"#,
            422,
            Some("resources.memoryBytes"),
        ),
        put(
            "fractional cpu",
            r#"{"image": "x", "resources": {"cpuMillis": 0.5}}"#,
            422,
            Some("resources.cpuMillis"),
        ),
        put(
            "NaN",
            r#"{"image": "x", "replicas": NaN}"#,
            400,
            Some("body"),
        ),
        put(
            "Infinity",
            r#"{"image": "x", "replicas": Infinity}"#,
            400,
            Some("body"),
        ),
        put(
            "port 0",
            r#"{"image": "x", "ports": [{"name": "http", "containerPort": 0}]}"#,
            422,
            Some("ports[0].containerPort"),
        ),
        put(
            "port above 65535",
            r#"{"image": "x", "ports": [{"name": "http", "containerPort": 70000}]}"#,
            422,
            Some("ports[0].containerPort"),
        ),
        put(
            "duplicate port",
            r#"{"image": "x", "ports": [{"name": "a", "containerPort": 80}, {"name": "b", "containerPort": 80}]}"#,
            422,
            Some("ports[1].containerPort"),
        ),
        put(
            "bad port name",
            r#"{"image": "x", "ports": [{"name": "HTTP", "containerPort": 80}]}"#,
            422,
            Some("ports[0].name"),
        ),
        put(
            "unknown enum value",
            r#"{"image": "x", "migrationPolicy": "teleport"}"#,
            422,
            Some("migrationPolicy"),
        ),
        put(
            "body name differs",
            r#"{"name": "other", "image": "x"}"#,
            422,
            Some("name"),
        ),
        put("empty image", r#"{"image": ""}"#, 422, Some("image")),
        put(
            "image with a newline",
            r#"{"image": "x\ny"}"#,
            422,
            Some("image"),
        ),
        put(
            "NUL in an argument",
            r#"{"image": "x", "command": ["a\u0000b"]}"#,
            422,
            Some("command[0]"),
        ),
        put(
            "bad env name",
            r#"{"image": "x", "env": {"1A": "b"}}"#,
            422,
            Some("env.1A"),
        ),
        put(
            "duplicate key",
            r#"{"image": "x", "image": "y"}"#,
            422,
            Some("image"),
        ),
        put(
            "in constraint without values",
            r#"{"image": "x", "placement": {"constraints": [{"key": "zone", "op": "in"}]}}"#,
            422,
            Some("placement.constraints[0].values"),
        ),
        put(
            "update strategy all zero",
            r#"{"image": "x", "updateStrategy": {"maxUnavailable": 0, "maxSurge": 0}}"#,
            422,
            Some("updateStrategy"),
        ),
        put("deeply nested array", &deep, 422, Some("body")),
        case(
            "deeply nested value",
            Method::POST,
            "/v1/commands",
            &deep_object,
            400,
            Some("body"),
        ),
        put("not an object", r#"[1, 2]"#, 422, Some("body")),
        put(
            "an array posing as the struct",
            r#"["web", "img"]"#,
            422,
            Some("body"),
        ),
        put("oversized body", &big, 413, Some("body")),
        case(
            "bad path name",
            Method::PUT,
            "/v1/workloads/Bad_Name",
            r#"{"image": "x"}"#,
            400,
            Some("name"),
        ),
        case(
            "path traversal",
            Method::PUT,
            "/v1/workloads/..%2F..%2Fetc",
            r#"{"image": "x"}"#,
            400,
            Some("name"),
        ),
        case(
            "encoded dots",
            Method::GET,
            "/v1/workloads/%2e%2e",
            "",
            400,
            Some("name"),
        ),
        case(
            "NUL in a path",
            Method::GET,
            "/v1/workloads/a%00b",
            "",
            400,
            Some("name"),
        ),
        case(
            "name too long",
            Method::PUT,
            &format!("/v1/workloads/{}", "a".repeat(64)),
            r#"{"image": "x"}"#,
            400,
            Some("name"),
        ),
        case(
            "negative checkIndex",
            Method::PUT,
            "/v1/workloads/web?checkIndex=-1",
            r#"{"image": "x"}"#,
            400,
            Some("checkIndex"),
        ),
        case(
            "checkIndex not a number",
            Method::PUT,
            "/v1/workloads/web?checkIndex=abc",
            r#"{"image": "x"}"#,
            400,
            Some("checkIndex"),
        ),
        case(
            "unknown query parameter",
            Method::PUT,
            "/v1/workloads/web?force=true",
            r#"{"image": "x"}"#,
            400,
            Some("force"),
        ),
        case(
            "stale checkIndex",
            Method::PUT,
            &format!("/v1/workloads/web?checkIndex={}", revision - 1),
            r#"{"image": "y"}"#,
            409,
            None,
        ),
        case(
            "huge checkIndex",
            Method::PUT,
            "/v1/workloads/web?checkIndex=18446744073709551615",
            r#"{"image": "y"}"#,
            409,
            None,
        ),
        case(
            "checkIndex above u64",
            Method::PUT,
            "/v1/workloads/web?checkIndex=18446744073709551616",
            r#"{"image": "y"}"#,
            400,
            Some("checkIndex"),
        ),
        case(
            "delete a missing workload",
            Method::DELETE,
            "/v1/workloads/missing",
            "",
            404,
            None,
        ),
        case(
            "delete with a stale revision",
            Method::DELETE,
            &format!("/v1/workloads/web?checkIndex={}", revision + 1000),
            "",
            409,
            None,
        ),
        case(
            "patch a missing node",
            Method::PATCH,
            "/v1/nodes/missing",
            r#"{"schedulable": false}"#,
            404,
            None,
        ),
        case(
            "empty node patch",
            Method::PATCH,
            "/v1/nodes/n1",
            r#"{}"#,
            422,
            Some("body"),
        ),
        case(
            "service with a bad vip",
            Method::PUT,
            "/v1/services/web",
            r#"{"workload": "web", "vip": "10.0.0.300"}"#,
            422,
            Some("vip"),
        ),
        case(
            "service with a bad workload",
            Method::PUT,
            "/v1/services/web",
            r#"{"workload": "../x"}"#,
            422,
            Some("workload"),
        ),
        case(
            "service port 0",
            Method::PUT,
            "/v1/services/web",
            r#"{"workload": "web", "ports": [{"name": "p", "port": 0, "targetPort": 80}]}"#,
            422,
            Some("ports[0].port"),
        ),
        case(
            "member with a bad address",
            Method::POST,
            "/v1/cluster/members",
            r#"{"id": 2, "addr": {"raftAddr": "nowhere", "apiAddr": "127.0.0.1:1"}}"#,
            422,
            Some("addr.raftAddr"),
        ),
        case(
            "member id of the wrong type",
            Method::POST,
            "/v1/cluster/members",
            r#"{"id": "two", "addr": {"raftAddr": "127.0.0.1:1", "apiAddr": "127.0.0.1:2"}}"#,
            422,
            Some("id"),
        ),
        case(
            "member id 0",
            Method::POST,
            "/v1/cluster/members",
            r#"{"id": 0, "addr": {"raftAddr": "127.0.0.1:1", "apiAddr": "127.0.0.1:2"}}"#,
            422,
            Some("id"),
        ),
        case(
            "remove member not a number",
            Method::DELETE,
            "/v1/cluster/members/abc",
            "",
            400,
            Some("id"),
        ),
        case(
            "remove an unknown member",
            Method::DELETE,
            "/v1/cluster/members/99",
            "",
            404,
            None,
        ),
        case(
            "remove the last voter",
            Method::DELETE,
            "/v1/cluster/members/1",
            "",
            409,
            None,
        ),
        case(
            "raw command with an unknown field",
            Method::POST,
            "/v1/commands",
            r#"{"v": 1, "command": {"type": "delete_workload", "name": "web", "atMs": 0, "sneaky": 1}}"#,
            422,
            Some("command.sneaky"),
        ),
        case(
            "raw command of an unknown type",
            Method::POST,
            "/v1/commands",
            r#"{"v": 1, "command": {"type": "format_disk"}}"#,
            422,
            Some("command.type"),
        ),
        case(
            "raw token command",
            Method::POST,
            "/v1/commands",
            r#"{"v": 1, "command": {"type": "revoke_token", "id": "x", "atMs": 0}}"#,
            403,
            Some("command.type"),
        ),
        case(
            "blocking wait not a duration",
            Method::GET,
            "/v1/workloads?index=1&wait=soon",
            "",
            400,
            Some("wait"),
        ),
        case(
            "blocking wait too long",
            Method::GET,
            "/v1/workloads?index=1&wait=11m",
            "",
            400,
            Some("wait"),
        ),
        case(
            "negative index",
            Method::GET,
            "/v1/workloads?index=-5",
            "",
            400,
            Some("index"),
        ),
        case(
            "stale not a bool",
            Method::GET,
            "/v1/workloads?stale=maybe",
            "",
            400,
            Some("stale"),
        ),
        case(
            "watch of an unknown kind",
            Method::GET,
            "/v1/watch?kind=secret",
            "",
            400,
            Some("kind"),
        ),
        case("unknown path", Method::GET, "/v1/nope", "", 404, None),
        case("outside /v1", Method::GET, "/etc/passwd", "", 404, None),
    ];
    let mut with_headers =
        |name, headers: Vec<(&'static str, String)>, body: Option<&str>, status: u16, field| {
            cases.push(Case {
                name,
                method: Method::PUT,
                uri: "/v1/workloads/web".into(),
                headers,
                body: body.map(|b| b.as_bytes().to_vec()),
                status: StatusCode::from_u16(status).unwrap(),
                field,
            });
        };
    let ct = ("content-type", "application/json".to_owned());
    let ok_body = Some(r#"{"image": "y"}"#);
    with_headers(
        "text/plain body",
        vec![("content-type", "text/plain".into())],
        ok_body,
        415,
        Some("content-type"),
    );
    with_headers(
        "no content type",
        vec![],
        ok_body,
        415,
        Some("content-type"),
    );
    cases.push(Case {
        name: "invalid utf-8 bytes",
        method: Method::PUT,
        uri: "/v1/workloads/web".into(),
        headers: vec![("content-type", "application/json".to_owned())],
        body: Some(b"{\"image\": \"\xff\xfe\"}".to_vec()),
        status: StatusCode::BAD_REQUEST,
        field: Some("body"),
    });
    let mut with_headers = |name, headers: Vec<(&'static str, String)>, status: u16, field| {
        cases.push(Case {
            name,
            method: Method::PUT,
            uri: "/v1/workloads/web".into(),
            headers,
            body: ok_body.map(|b| b.as_bytes().to_vec()),
            status: StatusCode::from_u16(status).unwrap(),
            field,
        });
    };
    with_headers(
        "If-Match not quoted",
        vec![ct.clone(), ("if-match", revision.to_string())],
        400,
        Some("If-Match"),
    );
    with_headers(
        "If-Match not a number",
        vec![ct.clone(), ("if-match", "\"abc\"".into())],
        400,
        Some("If-Match"),
    );
    with_headers(
        "If-Match weak",
        vec![ct.clone(), ("if-match", format!("W/\"{revision}\""))],
        400,
        Some("If-Match"),
    );
    with_headers(
        "If-Match zero",
        vec![ct.clone(), ("if-match", "\"0\"".into())],
        400,
        Some("If-Match"),
    );
    with_headers(
        "If-Match star",
        vec![ct.clone(), ("if-match", "*".into())],
        400,
        Some("If-Match"),
    );
    with_headers(
        "If-Match stale",
        vec![ct.clone(), ("if-match", format!("\"{}\"", revision - 1))],
        412,
        None,
    );
    with_headers(
        "If-None-Match on an existing object",
        vec![ct.clone(), ("if-none-match", "*".into())],
        412,
        None,
    );
    with_headers(
        "If-None-Match with a tag",
        vec![ct.clone(), ("if-none-match", "\"3\"".into())],
        400,
        Some("If-None-Match"),
    );
    with_headers(
        "two preconditions",
        vec![
            ct.clone(),
            ("if-none-match", "*".into()),
            ("if-match", "\"3\"".into()),
        ],
        400,
        Some("If-Match"),
    );
    let node = api.cluster.node(1);
    let reader = flotilla_controller::auth::create_token(
        &node,
        TokenRole::ReadOnly,
        None,
        "reader".into(),
        now_ms(),
    )
    .await?;
    let joiner = flotilla_controller::auth::create_token(
        &node,
        TokenRole::ControllerJoin,
        None,
        "join".into(),
        now_ms(),
    )
    .await?;
    let expired = flotilla_controller::auth::create_token(
        &node,
        TokenRole::Admin,
        Some(Duration::from_millis(1)),
        "short".into(),
        now_ms(),
    )
    .await?;
    let (admin_id, _) = api
        .bearer
        .trim_start_matches("Bearer ")
        .split_once('.')
        .context("token")?;
    let forged = format!("Bearer {admin_id}.{}", "0".repeat(32));
    let mut with_auth = |name, auth: String, method: Method, status: u16| {
        cases.push(Case {
            name,
            method,
            uri: "/v1/workloads/web".into(),
            headers: vec![ct.clone(), ("authorization", auth)],
            body: ok_body.map(|b| b.as_bytes().to_vec()),
            status: StatusCode::from_u16(status).unwrap(),
            field: None,
        });
    };
    with_auth("no token", "-".into(), Method::PUT, 401);
    with_auth("no token for a read", "-".into(), Method::GET, 401);
    with_auth("forged token", forged, Method::PUT, 401);
    with_auth(
        "unknown token",
        format!("Bearer zzzzzz.{}", "a".repeat(32)),
        Method::PUT,
        401,
    );
    with_auth("malformed token", "Bearer hello".into(), Method::PUT, 401);
    with_auth(
        "basic scheme",
        "Basic YWRtaW46YWRtaW4=".into(),
        Method::PUT,
        401,
    );
    with_auth(
        "expired token",
        format!("Bearer {}", expired.token),
        Method::GET,
        401,
    );
    with_auth(
        "read-only token writes",
        format!("Bearer {}", reader.token),
        Method::PUT,
        403,
    );
    with_auth(
        "join token as a bearer",
        format!("Bearer {}", joiner.token),
        Method::GET,
        403,
    );
    cases.push(Case {
        name: "read-only token runs a streaming exec",
        method: Method::GET,
        uri: "/v1/instances/web-0-0/exec/stream?command=sh".into(),
        headers: vec![("authorization", format!("Bearer {}", reader.token))],
        body: None,
        status: StatusCode::FORBIDDEN,
        field: None,
    });
    cases.push(Case {
        name: "token in the query string",
        method: Method::GET,
        uri: format!(
            "/v1/workloads?token={}",
            api.bearer.trim_start_matches("Bearer ")
        ),
        headers: vec![("authorization", "-".to_owned())],
        body: None,
        status: StatusCode::UNAUTHORIZED,
        field: Some("Authorization"),
    });
    cases.push(Case {
        name: "streaming exec without a command",
        method: Method::GET,
        uri: "/v1/instances/web-0-0/exec/stream?tty=true".into(),
        headers: vec![],
        body: None,
        status: StatusCode::UNPROCESSABLE_ENTITY,
        field: Some("command"),
    });
    cases.push(Case {
        name: "streaming exec that is not a websocket",
        method: Method::GET,
        uri: "/v1/instances/web-0-0/exec/stream?command=sh".into(),
        headers: vec![],
        body: None,
        status: StatusCode::BAD_REQUEST,
        field: None,
    });
    cases.push(Case {
        name: "wrong method",
        method: Method::POST,
        uri: "/v1/workloads/web".into(),
        headers: vec![ct.clone()],
        body: ok_body.map(|b| b.as_bytes().to_vec()),
        status: StatusCode::METHOD_NOT_ALLOWED,
        field: None,
    });

    let mut failures = Vec::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let applied = api.applied();
        let body = c.body.clone().map(Body::from);
        let r = api.call(c.method.clone(), &c.uri, &headers, body).await?;
        let ct = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let field = r.body["field"].as_str();
        let mut wrong = Vec::new();
        if r.status != c.status {
            wrong.push(format!("status {} (want {})", r.status, c.status));
        }
        if r.status.is_server_error() {
            wrong.push("a 5xx".into());
        }
        if ct != "application/problem+json" {
            wrong.push(format!("content-type {ct:?}"));
        }
        if r.body["status"].as_u64() != Some(r.status.as_u16() as u64)
            || r.body["type"].as_str().is_none()
        {
            wrong.push("no problem document".into());
        }
        if c.field.is_some() && field != c.field {
            wrong.push(format!("field {field:?} (want {:?})", c.field));
        }
        if c.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = r
                .headers
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !allow.contains("PUT") || !allow.contains("GET") {
                wrong.push(format!("Allow {allow:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {} — {}", c.name, wrong.join(", "), r.body));
        }
        let now = api.applied();
        if now != applied {
            failures.push(format!(
                "{}: applied index moved {applied} -> {now}",
                c.name
            ));
        }
    }
    let after = api.get("/v1/workloads/web").await?;
    ensure!(
        after.body["revision"].as_u64() == Some(revision),
        "workload changed: {}",
        after.body
    );
    ensure!(
        after.body["spec"]["image"] == "busybox",
        "workload changed: {}",
        after.body
    );
    ensure!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!(
        "{} bad requests refused, none changed the applied index",
        cases.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_conditional_updates_refuse_lost_updates() -> Result<()> {
    let api = api().await?;
    let uri = "/v1/workloads/app";
    let create_only = [("if-none-match", "*")];
    let a = api
        .json(Method::PUT, uri, &create_only, json!({"image": "v1"}))
        .await?;
    ensure!(a.status == StatusCode::CREATED, "{} {}", a.status, a.body);
    let r1 = a.body["revision"].as_u64().context("revision")?;
    ensure!(
        a.headers.get("etag").and_then(|v| v.to_str().ok()) == Some(&format!("\"{r1}\"")),
        "etag"
    );
    let again = api
        .json(Method::PUT, uri, &create_only, json!({"image": "v1"}))
        .await?;
    ensure!(
        again.status == StatusCode::PRECONDITION_FAILED,
        "{}",
        again.status
    );
    ensure!(
        again.body["currentRevision"].as_u64() == Some(r1),
        "{}",
        again.body
    );

    // Two clients read r1; the first update wins, the second is refused.
    let tag = format!("\"{r1}\"");
    let first = api
        .json(
            Method::PUT,
            uri,
            &[("if-match", &tag)],
            json!({"image": "v2"}),
        )
        .await?;
    ensure!(
        first.status == StatusCode::OK,
        "{} {}",
        first.status,
        first.body
    );
    let r2 = first.body["revision"].as_u64().context("revision")?;
    ensure!(r2 > r1, "revision did not grow");
    ensure!(first.body["generation"] == 2, "{}", first.body);
    let lost = api
        .json(
            Method::PUT,
            uri,
            &[("if-match", &tag)],
            json!({"image": "v3"}),
        )
        .await?;
    ensure!(
        lost.status == StatusCode::PRECONDITION_FAILED,
        "{} {}",
        lost.status,
        lost.body
    );
    ensure!(
        lost.body["code"] == "revision-mismatch" && lost.body["currentRevision"] == r2,
        "{}",
        lost.body
    );
    let lost = api
        .json(
            Method::PUT,
            &format!("{uri}?checkIndex={r1}"),
            &[],
            json!({"image": "v3"}),
        )
        .await?;
    ensure!(
        lost.status == StatusCode::CONFLICT,
        "{} {}",
        lost.status,
        lost.body
    );
    let now = api.get(uri).await?;
    ensure!(
        now.body["spec"]["image"] == "v2" && now.body["revision"] == r2,
        "{}",
        now.body
    );

    // checkIndex=0 creates only; a conditional delete refuses a stale revision.
    let c = api
        .json(
            Method::PUT,
            "/v1/workloads/other?checkIndex=0",
            &[],
            json!({"image": "x"}),
        )
        .await?;
    ensure!(c.status == StatusCode::CREATED, "{}", c.status);
    let d = api
        .call(Method::DELETE, &format!("{uri}?checkIndex={r1}"), &[], None)
        .await?;
    ensure!(d.status == StatusCode::CONFLICT, "{}", d.status);
    let d = api
        .call(
            Method::DELETE,
            uri,
            &[("if-match", &format!("\"{r2}\""))],
            None,
        )
        .await?;
    ensure!(d.status == StatusCode::OK, "{} {}", d.status, d.body);
    let gone = api.get(uri).await?;
    ensure!(gone.status == StatusCode::NOT_FOUND, "{}", gone.status);

    // Stale and linearizable reads agree on a single controller; lists carry the index.
    let list = api.get("/v1/workloads?stale=true").await?;
    ensure!(
        list.body["items"].as_array().map(Vec::len) == Some(1),
        "{}",
        list.body
    );
    ensure!(
        list.body["index"].as_u64() == Some(list.index()),
        "index in body and header"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_blocking_query_returns_on_a_change_and_only_then() -> Result<()> {
    let api = std::sync::Arc::new(api().await?);
    let w = api
        .json(Method::PUT, "/v1/workloads/a", &[], json!({"image": "x"}))
        .await?;
    ensure!(w.status == StatusCode::CREATED, "{}", w.status);
    let list = api.get("/v1/workloads").await?;
    let index = list.index();
    ensure!(index > 0, "no index header");

    // A change to another collection does not wake a workload query.
    let t = Instant::now();
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get(&format!("/v1/workloads?index={index}&wait=1s"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.json(Method::PUT, "/v1/services/s", &[], json!({"workload": "a"}))
        .await?;
    let r = waiter.await??;
    ensure!(
        t.elapsed() >= Duration::from_millis(950),
        "woke after {:?}",
        t.elapsed()
    );
    ensure!(
        r.status == StatusCode::OK && r.body["items"].as_array().map(Vec::len) == Some(1),
        "{}",
        r.body
    );

    // A workload change does, promptly.
    let index = r.index();
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get(&format!("/v1/workloads?index={index}&wait=20s"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(!waiter.is_finished(), "answered before any change");
    let t = Instant::now();
    api.json(Method::PUT, "/v1/workloads/b", &[], json!({"image": "y"}))
        .await?;
    let r = waiter.await??;
    let woke = t.elapsed();
    ensure!(woke < Duration::from_secs(5), "woke only after {woke:?}");
    ensure!(
        r.body["items"].as_array().map(Vec::len) == Some(2),
        "{}",
        r.body
    );
    ensure!(r.index() > index, "index did not advance");

    // A single object: blocks until it appears; an index behind answers at once.
    let waiter = {
        let api = api.clone();
        let index = r.index();
        tokio::spawn(async move {
            api.get(&format!("/v1/workloads/c?index={index}&wait=20s"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.json(Method::PUT, "/v1/workloads/c", &[], json!({"image": "z"}))
        .await?;
    let c = waiter.await??;
    ensure!(
        c.status == StatusCode::OK && c.body["spec"]["image"] == "z",
        "{} {}",
        c.status,
        c.body
    );
    let t = Instant::now();
    let behind = api.get("/v1/workloads?index=1&wait=20s").await?;
    ensure!(
        behind.status == StatusCode::OK && t.elapsed() < Duration::from_secs(2),
        "behind index blocked"
    );
    println!(
        "blocking query answered {} ms after the write was sent",
        woke.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sse_watch_delivers_puts_deletes_and_events() -> Result<()> {
    let api = api().await?;
    let w = api
        .json(Method::PUT, "/v1/workloads/old", &[], json!({"image": "x"}))
        .await?;
    let old_rev = w.body["revision"].as_u64().context("revision")?;
    let resp = api
        .router
        .clone()
        .oneshot(
            Request::get(format!("/v1/watch?from={}&kind=workload", old_rev - 1))
                .header("authorization", &api.bearer)
                .body(Body::empty())?,
        )
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ensure!(ct.starts_with("text/event-stream"), "{ct}");
    let mut body = resp.into_body().into_data_stream();
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut next_until = async |text: &mut String, needle: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, body.next())
                .await
                .with_context(|| format!("no {needle:?} in {text:?}"))?
                .context("stream ended")??;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok(())
    };
    // The object above `from` comes first.
    next_until(&mut text, "\"key\":\"old\"").await?;
    ensure!(
        text.contains("event: put") && text.contains(&format!("id: {old_rev}")),
        "{text}"
    );
    text.clear();
    let t = Instant::now();
    let n = api
        .json(Method::PUT, "/v1/workloads/new", &[], json!({"image": "y"}))
        .await?;
    let new_rev = n.body["revision"].as_u64().context("revision")?;
    next_until(&mut text, "\"key\":\"new\"").await?;
    let latency = t.elapsed();
    ensure!(text.contains(&format!("id: {new_rev}")), "{text}");
    text.clear();
    api.call(Method::DELETE, "/v1/workloads/old", &[], None)
        .await?;
    next_until(&mut text, "event: delete").await?;
    ensure!(text.contains("\"key\":\"old\""), "{text}");
    // kind=workload: a service change is not sent.
    text.clear();
    api.json(
        Method::PUT,
        "/v1/services/s",
        &[],
        json!({"workload": "new"}),
    )
    .await?;
    api.json(
        Method::PUT,
        "/v1/workloads/last",
        &[],
        json!({"image": "z"}),
    )
    .await?;
    next_until(&mut text, "\"key\":\"last\"").await?;
    ensure!(!text.contains("\"kind\":\"service\""), "{text}");
    println!(
        "sse put delivered {} ms after the write was sent",
        latency.as_millis()
    );
    Ok(())
}

/// One entry can change several objects at one revision; a client that saw only part of that
/// revision resumes with the last event id it saw and gets the rest of the revision, not just
/// what came after it. A plain revision number still means "all of it seen", and an id that is
/// neither is refused naming the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sse_resume_mid_revision_delivers_the_rest_of_it() -> Result<()> {
    use flotilla_api::cluster::{Command, CommandBatch, PutWorkload, WorkloadSpec};
    let api = api().await?;
    let put = |name: &str| {
        Command::PutWorkload(PutWorkload {
            spec: WorkloadSpec {
                name: name.into(),
                image: "x".into(),
                ..Default::default()
            },
            expect_revision: None,
            at_ms: now_ms(),
        })
    };
    // One entry, as the leader's group commit makes them (proposed as such directly).
    let written = api
        .cluster
        .node(1)
        .raft()
        .client_write(flotilla_api::cluster::VersionedCommand::new(
            Command::Batch(CommandBatch {
                commands: vec![put("a"), put("b"), put("c")],
            }),
        ))
        .await?;
    let rev = written.log_id.index;
    for name in ["a", "b", "c"] {
        let w = api.get(&format!("/v1/workloads/{name}")).await?;
        ensure!(w.body["revision"] == rev, "{name}: {}", w.body);
    }
    let later = api
        .json(Method::PUT, "/v1/workloads/d", &[], json!({"image": "y"}))
        .await?;
    let later_rev = later.body["revision"].as_u64().context("revision")?;

    // Read what a stream sends after `last_id`, up to the event for `until`.
    let read = async |last_id: &str, until: &str| -> Result<(StatusCode, String)> {
        let resp = api
            .router
            .clone()
            .oneshot(
                Request::get("/v1/watch?kind=workload")
                    .header("authorization", &api.bearer)
                    .header("last-event-id", last_id)
                    .body(Body::empty())?,
            )
            .await?;
        let status = resp.status();
        let mut body = resp.into_body().into_data_stream();
        use futures_util::StreamExt;
        let mut text = String::new();
        while status == StatusCode::OK && !text.contains(until) {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .with_context(|| format!("no {until:?} in {text:?}"))?
                .context("stream ended")??;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        if status != StatusCode::OK {
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk?));
            }
        }
        Ok((status, text))
    };
    let keys = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["key"].as_str().map(str::to_owned))
            .collect()
    };
    // From before the entry: all of it, in key order, each with its own id.
    let (_, text) = read(&(rev - 1).to_string(), "\"key\":\"d\"").await?;
    ensure!(keys(&text) == ["a", "b", "c", "d"], "{text}");
    let id_of_a = format!("{rev}:0:workload/a");
    ensure!(text.contains(&format!("id: {id_of_a}\n")), "{text}");
    // After `a` only: the rest of the revision, then the next one.
    let (_, text) = read(&id_of_a, "\"key\":\"d\"").await?;
    ensure!(keys(&text) == ["b", "c", "d"], "{text}");
    // After the whole revision.
    let (_, text) = read(&rev.to_string(), "\"key\":\"d\"").await?;
    ensure!(keys(&text) == ["d"], "{text}");
    ensure!(
        text.contains(&format!("id: {later_rev}:0:workload/d")),
        "{text}"
    );
    // Not an id of this stream.
    for bad in ["abc", "5:7:x", "5:0:"] {
        let (status, text) = read(bad, "").await?;
        ensure!(
            status == StatusCode::BAD_REQUEST && text.contains("Last-Event-ID"),
            "{bad}: {status} {text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cluster_endpoints_answer() -> Result<()> {
    let api = api().await?;
    let s = api.get("/v1/cluster/status").await?;
    ensure!(
        s.status == StatusCode::OK && s.body["state"] == "leader",
        "{}",
        s.body
    );
    let m = api.get("/v1/cluster/members").await?;
    ensure!(
        m.body["members"][0]["role"] == "leader" && m.body["members"][0]["voter"] == true,
        "{}",
        m.body
    );
    ensure!(m.body["members"][0]["healthy"] == true, "{}", m.body);
    let l = api.get("/v1/cluster/leader").await?;
    ensure!(l.body["leader"] == 1, "{}", l.body);
    let r = api.get("/v1/cluster/raft").await?;
    ensure!(
        r.body["state"] == "leader" && r.body["appliedIndex"].as_u64().is_some(),
        "{}",
        r.body
    );
    let snap = api
        .call(Method::POST, "/v1/cluster/snapshot", &[], None)
        .await?;
    ensure!(
        snap.status == StatusCode::ACCEPTED,
        "{} {}",
        snap.status,
        snap.body
    );
    let h = api.get("/v1/ready").await?;
    ensure!(
        h.status == StatusCode::OK && h.body["status"] == "ok",
        "{}",
        h.body
    );
    let e = api.get("/v1/events").await?;
    ensure!(
        e.status == StatusCode::OK && e.body["items"].is_array(),
        "{}",
        e.body
    );
    Ok(())
}
