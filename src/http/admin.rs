//! LiteLLM's admin API on the HTTP door, same paths and field names so existing scripts keep
//! working: `/key/generate`, `/key/update`, `/key/delete`, `/key/info`, `/key/list`,
//! `/spend/logs`, `/spend/report` (also `/global/spend/report`). Master key only; the core
//! decides. Handlers parse, call the core, and shape LiteLLM's JSON.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Body, HttpError, parse_json};
use super::handlers::Caller;
use crate::core::Gateway;
use crate::core::admin::{KeyView, day_range, parse_group_by};
use crate::core::error::Error;
use crate::store::clock::{format_day, to_unix_ms};
use crate::store::{KeyPatch, NewKey, SpendLogFilter, SpendRecord};

/// `2026-11-23T10:11:12Z`.
pub fn iso8601(t: SystemTime) -> String {
    let ms = to_unix_ms(t);
    let days = ms.div_euclid(86_400_000);
    let secs = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_day(days),
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

fn opt_time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(iso8601(t)))
}

/// A key in LiteLLM's shape (`token` is the hash; the plain key never appears).
fn key_json(v: &KeyView) -> Value {
    let r = &v.record;
    json!({
        "token": r.token_hash,
        "key_name": r.key_name,
        "key_alias": r.key_alias,
        "models": r.models,
        "spend": v.spend,
        "max_budget": r.max_budget,
        "budget_duration": r.budget_duration,
        "budget_reset_at": opt_time(r.budget_reset_at),
        "rpm_limit": r.rpm_limit,
        "tpm_limit": r.tpm_limit,
        "max_parallel_requests": r.max_parallel_requests,
        "expires": opt_time(r.expires),
        "metadata": r.metadata,
        "blocked": r.blocked,
        "created_at": iso8601(r.created_at),
        "updated_at": iso8601(r.updated_at),
    })
}

pub async fn generate(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Body(body): Body,
) -> Result<Json<Value>, HttpError> {
    gw.authorize(&ctx)?;
    let new: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        parse_json(&body)?
    };
    let (plain, view) = gw.generate_key(&ctx, new).await?;
    let mut out = key_json(&view);
    if let Value::Object(m) = &mut out {
        m.insert("key".into(), Value::String(plain));
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    key: String,
    #[serde(flatten)]
    patch: KeyPatch,
}

pub async fn update(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Body(body): Body,
) -> Result<Json<Value>, HttpError> {
    gw.authorize(&ctx)?;
    let UpdateBody { key, patch } = parse_json(&body)?;
    let view = gw.update_key(&ctx, &key, patch).await?;
    Ok(Json(key_json(&view)))
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(default)]
    keys: Vec<String>,
}

pub async fn delete(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Body(body): Body,
) -> Result<Json<Value>, HttpError> {
    gw.authorize(&ctx)?;
    let DeleteBody { keys } = parse_json(&body)?;
    let deleted = gw.delete_keys(&ctx, &keys).await?;
    Ok(Json(json!({"deleted_keys": keys, "deleted": deleted})))
}

pub async fn info(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, HttpError> {
    gw.authorize(&ctx)?;
    let key = q
        .get("key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Error::bad_request("key is required").with_param("key"))?;
    let view = gw.key_info(&ctx, key).await?;
    Ok(Json(
        json!({"key": view.record.token_hash, "info": key_json(&view)}),
    ))
}

pub async fn list(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, HttpError> {
    let views = gw.list_keys(&ctx).await?;
    let full = q.get("return_full_object").is_some_and(|v| v == "true");
    let keys: Vec<Value> = if full {
        views.iter().map(key_json).collect()
    } else {
        views
            .iter()
            .map(|v| Value::String(v.record.token_hash.clone()))
            .collect()
    };
    Ok(Json(json!({
        "keys": keys,
        "total_count": views.len(),
        "current_page": 1,
        "total_pages": 1,
    })))
}

/// The `start_date` / `end_date` query parameters.
fn date_range(
    q: &HashMap<String, String>,
) -> Result<(Option<SystemTime>, Option<SystemTime>), Error> {
    day_range(
        q.get("start_date").map(String::as_str),
        q.get("end_date").map(String::as_str),
    )
}

fn spend_json(r: &SpendRecord) -> Value {
    json!({
        "request_id": r.request_id,
        "api_key": r.key_hash.clone().unwrap_or_default(),
        "key_alias": r.key_alias,
        "model": r.provider_model,
        "model_group": r.model_group,
        "model_id": r.deployment_id,
        "spend": r.cost_usd,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "startTime": iso8601(r.time),
        "latency_ms": r.latency_ms,
        "status": if r.status < 400 { "success" } else { "failure" },
        "status_code": r.status,
        "error_kind": r.error_kind,
        // Only stored with `log_raw_request_response: true`.
        "messages": r.request_body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()),
        "response": r.response_body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()),
    })
}

pub async fn spend_logs(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, HttpError> {
    gw.authorize(&ctx)?;
    let (start_date, end_date) = date_range(&q)?;
    let limit = match q.get("limit") {
        None => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| {
            Error::bad_request("limit must be a positive integer").with_param("limit")
        })?),
    };
    let filter = SpendLogFilter {
        start_date,
        end_date,
        key_hash: q.get("api_key").filter(|k| !k.is_empty()).cloned(),
        request_id: q.get("request_id").filter(|k| !k.is_empty()).cloned(),
        limit,
    };
    let rows = gw.spend_logs(&ctx, filter).await?;
    Ok(Json(rows.iter().map(spend_json).collect()))
}

pub async fn spend_report(
    State(gw): State<Gateway>,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, HttpError> {
    gw.authorize(&ctx)?;
    let group_by = parse_group_by(q.get("group_by").map(String::as_str))?;
    let (start, end) = date_range(&q)?;
    let rows = gw.spend_report(&ctx, group_by, start, end).await?;
    Ok(Json(
        rows.iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "spend": r.spend,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "requests": r.requests,
                })
            })
            .collect(),
    ))
}
