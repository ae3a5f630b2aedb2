//! The client against a small stand-in server: the token on the wire, the
//! meaning of each refusal, 204, the event stream, a Unix socket.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use orchestrator_client::{Client, ClientError, EventFilter, Method};
use orchestrator_core::api::{CompleteRequest, WaitPoll};

/// The bearer token a request carried, echoed as an agent-token list.
async fn tokens(headers: HeaderMap) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    axum::Json(serde_json::json!([{"name": auth, "created_at_ms": 1, "revoked_at_ms": null}]))
}

fn app() -> Router {
    Router::new()
        .route("/v1/agent-tokens", get(tokens))
        .route(
            "/v1/agents",
            get(|| async {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(serde_json::json!({"error": "bad", "details": {"field": "x"}})),
                )
            }),
        )
        .route(
            "/v1/inbox",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route("/v1/agents/{id}/claim", post(claim))
        .route(
            "/v1/jobs/{id}/complete",
            post(|| async {
                (
                    StatusCode::CONFLICT,
                    axum::Json(serde_json::json!({"error": "lease expired"})),
                )
            }),
        )
        .route(
            "/v1/ask/wait",
            post(|| async {
                axum::Json(serde_json::json!({
                    "question_id": 3, "state": "answered", "asked_at_ms": 1,
                    "answer": "yes", "answered_by": "user:admin", "answered_at_ms": 2
                }))
            }),
        )
        .route("/v1/events", get(events))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
}

async fn claim(axum::extract::Path(id): axum::extract::Path<String>) -> impl IntoResponse {
    if id == "known" {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no such agent"})),
        )
            .into_response()
    }
}

async fn events() -> impl IntoResponse {
    let t = |seq: i64| {
        serde_json::json!({
            "seq": seq, "entity": "run", "entity_id": "r1", "run_id": "r1",
            "from": null, "to": "running", "reason": "r", "actor": "daemon", "at_ms": 5
        })
    };
    let body = format!(": keep-alive\n\ndata: {}\n\ndata: {}\n\n", t(1), t(2));
    ([("content-type", "text/event-stream")], body)
}

async fn serve_tcp() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });
    format!("http://{addr}/")
}

#[tokio::test]
async fn typed_answers_and_refusals() {
    let base = serve_tcp().await;
    let c = Client::new(&base, "tok").unwrap();
    let list = c.agent_tokens().await.unwrap();
    assert_eq!(list[0].name, "Bearer tok");

    let e = c.agents().await.unwrap_err();
    let r = e.refusal().unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_text(), "bad");
    assert_eq!(r.message(), r#"bad ({"field":"x"})"#);
    assert!(matches!(e, ClientError::Rejected(_)) && !e.is_retryable());

    let e = c.inbox().await.unwrap_err();
    assert!(matches!(&e, ClientError::Server(r) if r.error_text() == "upstream down"));
    assert!(e.is_retryable());

    assert!(c.claim(&"known".into(), 0, "k").await.unwrap().is_none());
    let e = c.claim(&"gone".into(), 0, "k").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::UnknownAgent { agent_id, refusal } if agent_id == "gone" && refusal.message() == "no such agent"),
        "{e:?}"
    );

    let req: CompleteRequest = serde_json::from_value(serde_json::json!({
        "agent_id": "a", "lease_token": "t",
        "outcome": {"success": true, "exit_codes": [], "duration_ms": 1, "bundle": "b"}
    }))
    .unwrap();
    let e = c.complete(1.into(), &req).await.unwrap_err();
    assert!(matches!(&e, ClientError::StaleLease(r) if r.message() == "lease expired"));

    // The raw answer is as it came: a redirect is not followed.
    let raw = Client::builder(&base)
        .build()
        .unwrap()
        .send(Method::GET, "/ui", None)
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(raw.headers["location"], "/ui/");
}

#[tokio::test]
async fn no_answer_is_unreachable() {
    // A port just freed: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = Client::builder(format!("http://127.0.0.1:{port}"))
        .token("t")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let e = c.runs(5).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unreachable { base, path, .. } if base.ends_with(&port.to_string()) && path == "/v1/runs?limit=5"),
        "{e:?}"
    );
    assert!(e.is_retryable() && e.status().is_none());
}

#[tokio::test]
async fn events_stream_as_transitions() {
    let c = Client::new(&serve_tcp().await, "t").unwrap();
    let seen: Vec<_> = c
        .events(&EventFilter::run(&"r1".into(), 0))
        .await
        .unwrap()
        .map(|t| t.unwrap().seq)
        .collect()
        .await;
    assert_eq!(seen, [1, 2]);
}

#[tokio::test]
async fn a_unix_socket_carries_the_requests() {
    let dir = std::env::temp_dir().join(format!("orch-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, app()).await });
    let c = Client::builder("http://agent")
        .unix_socket(&socket)
        .token("step")
        .build()
        .unwrap();
    let status = c
        .step_wait(&WaitPoll {
            question_id: 3,
            ..WaitPoll::default()
        })
        .await
        .unwrap();
    assert_eq!(status.answer.as_deref(), Some("yes"));
    let _ = std::fs::remove_dir_all(&dir);
}
