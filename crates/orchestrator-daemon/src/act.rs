//! Signed one-click links (`/v1/act/{token}`): how a human answers from a
//! chat without a token of their own. The link itself is the credential: an
//! HMAC-signed action (approve a stage, reject it, answer a question with a
//! given text) for one request (the transition that asked) that expires.
//! Opening it (GET) shows what it will do and a button; only the POST acts.
//! Chat apps fetch links to preview them, and a preview must never approve
//! anything. The POST acts once: the store refuses a link used before, or
//! one whose request was since answered or asked again, and records the use
//! with the action.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use orchestrator_core::Actor;
use orchestrator_store::{HumanCommand, LinkTarget, LinkUse, StoreError};

use crate::extract::Path;
use crate::hooks::sign::{verify_link, Action, ActionError, ActionKind, SignedAction};
use crate::App;

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title></head><body style=\"font-family:sans-serif;max-width:36em;margin:2em auto\"><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (status, Html(html)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn verified(app: &App, token: &str) -> Result<SignedAction, Box<Response>> {
    let Some(links) = &app.config.hooks.links else {
        return Err(Box::new(page(
            StatusCode::NOT_FOUND,
            "Links are off",
            "<p>This daemon makes no action links (it has no <code>--public-url</code>).</p>",
        )));
    };
    verify_link(token, &links.key, app.config.clock.now_ms()).map_err(|e| {
        let status = match e {
            ActionError::Expired { .. } => StatusCode::GONE,
            ActionError::BadSignature => StatusCode::FORBIDDEN,
            ActionError::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        Box::new(page(
            status,
            "This link does not work",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ))
    })
}

fn describe(a: &Action) -> String {
    let stage = a.stage_id.as_deref().unwrap_or("?");
    match a.kind {
        ActionKind::Approve => format!("approve stage {stage} of run {}", a.run_id),
        ActionKind::Reject => format!(
            "reject stage {stage} of run {} with feedback {:?}",
            a.run_id,
            a.text.as_deref().unwrap_or("")
        ),
        ActionKind::Answer => format!(
            "answer question {} of run {} with {:?}",
            a.question_id.unwrap_or_default(),
            a.run_id,
            a.text.as_deref().unwrap_or("")
        ),
        ActionKind::Retry => format!("retry failed stage {stage} of run {}", a.run_id),
        ActionKind::Skip => format!(
            "skip failed stage {stage} of run {} (its dependents go on without it)",
            a.run_id
        ),
        ActionKind::Abort => format!("abort run {} (it ends failed)", a.run_id),
    }
}

/// `GET /v1/act/{token}`: what the link does, and the button that does it.
pub async fn show(State(app): State<Arc<App>>, Path(token): Path<String>) -> Response {
    let signed = match verified(&app, &token) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let what = describe(&signed.action);
    // A link already used, or sent for a request a newer one replaced,
    // says so before anyone clicks.
    if let Some(link) = link_use(&signed) {
        match app.store.link_refusal(&signed.action.run_id, link).await {
            Ok(Some(why)) => {
                return page(
                    StatusCode::CONFLICT,
                    "This link does not work any more",
                    &format!(
                        "<p>It would {}, but: {}</p>",
                        escape(&what),
                        escape(&why.to_string())
                    ),
                )
            }
            Ok(None) => {}
            Err(StoreError::NotFound { .. }) => {
                return page(
                    StatusCode::NOT_FOUND,
                    "This link does not work",
                    "<p>Its run or question is not known here.</p>",
                )
            }
            Err(e) => tracing::warn!(error = %e, "cannot tell whether a link was used; showing it"),
        }
    }
    page(
        StatusCode::OK,
        "Confirm",
        &format!(
            "<p>This link will <b>{}</b>.</p><form method=\"post\"><button type=\"submit\" style=\"font-size:1.2em\">Do it</button></form>",
            escape(&what)
        ),
    )
}

/// The request a verified link answers, for the store's checks; None when
/// it names no stage or question.
fn link_use(signed: &SignedAction) -> Option<LinkUse> {
    let action = &signed.action;
    let target = match (action.kind, &action.stage_id, action.question_id) {
        (ActionKind::Answer, _, Some(q)) => LinkTarget::Question(q),
        (_, Some(stage), _) => LinkTarget::Stage(stage.clone()),
        _ => return None,
    };
    Some(LinkUse {
        id: signed.id.clone(),
        target,
        round: action.round,
        expires_at_ms: signed.expires_at_ms,
    })
}

/// `POST /v1/act/{token}`: does what the signed action says.
pub async fn act(State(app): State<Arc<App>>, Path(token): Path<String>) -> Response {
    let signed = match verified(&app, &token) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(link) = link_use(&signed) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This link does not work",
            "<p>The action names no stage or question.</p>",
        );
    };
    let action = signed.action;
    let command = match (action.kind, &action.stage_id, action.question_id) {
        (ActionKind::Approve, Some(stage), _) => HumanCommand::Approve {
            stage_id: stage.clone(),
            comment: Some("approved from a link".into()),
        },
        (ActionKind::Reject, Some(stage), _) => HumanCommand::Reject {
            stage_id: stage.clone(),
            feedback: action.text.clone().unwrap_or_default(),
        },
        (ActionKind::Answer, _, Some(id)) => HumanCommand::Answer {
            question_id: id,
            text: action.text.clone().unwrap_or_default(),
        },
        (ActionKind::Retry, Some(stage), _) => HumanCommand::Retry {
            stage_id: stage.clone(),
            comment: Some("retried from a link".into()),
            feedback: None,
        },
        (ActionKind::Skip, Some(stage), _) => HumanCommand::Skip {
            stage_id: stage.clone(),
            comment: Some("skipped from a link".into()),
        },
        (ActionKind::Abort, _, _) => HumanCommand::Abort {
            stage_id: None,
            comment: Some("aborted from a link".into()),
        },
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "This link does not work",
                "<p>The action names no stage or question.</p>",
            )
        }
    };
    let what = describe(&action);
    // The link is the credential: whoever it was sent to is who acts.
    let actor = match &action.to {
        Some(to) => Actor::user(format!(
            "link:{}",
            orchestrator_core::quote::one_line(to, 128)
        )),
        None => Actor::user("link"),
    };
    match app
        .store
        .human_by_link(&action.run_id, command, &actor, link)
        .await
    {
        Ok(run) => page(
            StatusCode::OK,
            "Done",
            &format!("<p>Done: {}. The run is {}.</p>", escape(&what), run.state),
        ),
        Err(e) => {
            let status = match e {
                StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::Conflict(_) | StoreError::Refused(_) => StatusCode::CONFLICT,
                StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            page(
                status,
                "Not done",
                &format!(
                    "<p>Could not {}: {}</p>",
                    escape(&what),
                    escape(&e.to_string())
                ),
            )
        }
    }
}
