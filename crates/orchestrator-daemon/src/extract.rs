//! Path and query extractors whose every rejection is an `ApiError` that
//! names the parameter and says what it expected. axum's own answer plain
//! text ("Invalid URL: Cannot parse `x` to a `i64`") without the name, which
//! a client cannot act on. They carry axum's names so that a handler written
//! the usual way (`Path(id): Path<String>`) gets them by importing from here.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiErr;

/// Path parameters, rejected as JSON.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => Err(path_error(parts, state, rejection).await),
        }
    }
}

/// What a path parameter is, from the path it is part of.
fn meaning(route: &str, key: &str) -> &'static str {
    match key {
        "id" if route.starts_with("/v1/runs/") => "a run id or a unique prefix of one",
        "id" if route.starts_with("/v1/agents/") => "an agent id",
        "id" if route.starts_with("/v1/jobs/") => "a job id",
        "stage" => "a stage id of the run",
        "qid" => "a question id",
        "token" => "an action link's token",
        _ => "a value",
    }
}

fn expected_type(t: &str) -> &'static str {
    match t {
        "i64" => "a whole number from -9223372036854775808 to 9223372036854775807",
        "u64" => "a whole number from 0 to 18446744073709551615",
        "i32" => "a whole number from -2147483648 to 2147483647",
        "u32" => "a whole number from 0 to 4294967295",
        _ => "text",
    }
}

/// Longest part of a bad value quoted back: a megabyte of it helps no one.
fn quote(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

async fn path_error<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    rejection: PathRejection,
) -> ApiErr {
    // The request's own path tells runs, agents and jobs apart as well as
    // the route's would (axum's `MatchedPath` is a feature this build leaves out).
    let route = parts.uri.path().to_owned();
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        // Only a route without parameters lacks them: a bug in the route
        // table, not in the request.
        return ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, rejection.body_text());
    };
    // The raw (decoded) parameters name what axum's error leaves unnamed;
    // they fail only on invalid UTF-8, which names its key itself.
    let raw: Vec<(String, String)> = RawPathParams::from_request_parts(parts, state)
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let (key, value, expected) = match failed.into_kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            let what = meaning(&route, &key);
            return ApiErr::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "path parameter `{key}` is not UTF-8 once percent-decoded: expected {what}"
                ),
            );
        }
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => (key, value, expected_type),
        ErrorKind::ParseErrorAtIndex {
            index,
            value,
            expected_type,
        } => {
            let key = raw.get(index).map(|(k, _)| k.clone()).unwrap_or_default();
            (key, value, expected_type)
        }
        ErrorKind::ParseError {
            value,
            expected_type,
        } => {
            let key = raw
                .iter()
                .find(|(_, v)| *v == value)
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            (key, value, expected_type)
        }
        other => {
            return ApiErr::new(
                StatusCode::BAD_REQUEST,
                format!("invalid path parameters: {other}"),
            )
        }
    };
    ApiErr::new(
        StatusCode::BAD_REQUEST,
        format!(
            "path parameter `{key}` is {}: expected {}, {}",
            quote(&value),
            meaning(&route, &key),
            expected_type(expected)
        ),
    )
}

/// What a query string may hold, for the error that refuses one.
pub trait QueryParams {
    /// Each parameter and the values it takes, as one line.
    const EXPECTED: &'static str;
}

/// A query string, rejected as JSON naming the parameter and the values
/// the endpoint takes. Unknown parameters are ignored, as axum's are.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + QueryParams> FromRequestParts<S> for Query<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => {
                // axum's text names the parameter ("limit: invalid digit
                // found in string") after a prefix of its own.
                let text = rejection.body_text();
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiErr::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid query string: {why}; expected {}", T::EXPECTED),
                ))
            }
        }
    }
}
