//! Keys, budgets, limits and spend end to end, through both doors, on both backends (SQLite in
//! a temp dir, PostgreSQL in a schema of its own): LiteLLM's key API, enforcement in the core,
//! spend records that add up and survive restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ai_api::core::router::{Clock, ManualClock, SystemClock};
use ai_api::grpc::pb;
use serde_json::{Value, json};
use support::fake_openai::{Behavior, FakeOpenAi};
use support::{MASTER_KEY, client, start_on};

/// Each cost: 12 prompt + 5 completion tokens at 0.001 each = 0.017 USD.
const COST: f64 = 0.017;

fn yaml(fake: &FakeOpenAi) -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: sk-upstream-secret\n      api_base: {base}\n      input_cost_per_token: 0.001\n      output_cost_per_token: 0.001\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: sk-upstream-secret\n      api_base: {base}\ngeneral_settings:\n  master_key: {MASTER_KEY}\n",
        base = fake.base
    )
}

/// A backend to run on: SQLite (a data dir) or PostgreSQL (a schema URL).
struct Backend {
    name: &'static str,
    url: Option<String>,
    dir: Option<tempfile::TempDir>,
    _pg: Option<support::pg::PgSchema>,
}

async fn backends() -> Vec<Backend> {
    let mut out = vec![Backend {
        name: "sqlite",
        url: None,
        dir: Some(tempfile::tempdir().unwrap()),
        _pg: None,
    }];
    if let Some(pg) = support::pg::schema().await {
        out.push(Backend {
            name: "postgres",
            url: Some(pg.url.clone()),
            dir: None,
            _pg: Some(pg),
        });
    }
    out
}

impl Backend {
    async fn start(&self, yaml: &str, clock: Arc<dyn Clock>) -> support::TestGateway {
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .or_else(|| Some(tempfile::tempdir().unwrap().keep()));
        start_on(yaml, &[], "/ai-api", clock, self.url.clone(), dir).await
    }
}

async fn admin(gw: &support::TestGateway, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn admin_get(gw: &support::TestGateway, path: &str, key: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn chat_as(
    gw: &support::TestGateway,
    key: &str,
    model: &str,
    stream: bool,
) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// Waits (bounded) until the spend logs hold `n` records.
async fn logs_with(gw: &support::TestGateway, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (_, v) = admin_get(gw, &format!("/spend/logs?{query}"), MASTER_KEY).await;
        if let Some(a) = v.as_array()
            && a.len() >= n
        {
            return a.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("spend logs never reached {n} records");
}

#[tokio::test]
async fn key_lifecycle_through_both_doors() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
        let (status, made) = admin(
            &gw,
            "/key/generate",
            json!({"key_alias": "billing", "models": ["gpt-4o-mini"], "metadata": {"team": "a"}}),
        )
        .await;
        assert_eq!(status, 200, "{}: {made}", b.name);
        let key = made["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("sk-"));
        let hash = made["token"].as_str().unwrap().to_string();

        // The key works on both doors, within its model list.
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        let r = chat_as(&gw, &key, "gpt-4o", false).await;
        assert_eq!(r.status(), 403, "{}", b.name);
        let mut grpc = pb::ai_api_service_client::AiApiServiceClient::connect(gw.grpc_url())
            .await
            .unwrap();
        let req = |k: &str, m: &str| {
            let mut r = tonic::Request::new(pb::ChatRequest {
                model: m.into(),
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
            r
        };
        assert!(grpc.chat(req(&key, "gpt-4o-mini")).await.is_ok());
        assert_eq!(
            grpc.chat(req(&key, "gpt-4o")).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );

        // A generated key is no admin.
        let (status, _) = admin_get(&gw, "/key/list", &key).await;
        assert_eq!(status, 403);

        // info and list never show the plain key.
        let (status, info) = admin_get(&gw, &format!("/key/info?key={key}"), MASTER_KEY).await;
        assert_eq!(status, 200);
        assert_eq!(info["info"]["key_alias"], "billing");
        assert!(
            (info["info"]["spend"].as_f64().unwrap() - 2.0 * COST).abs() < 1e-9,
            "{info}"
        );
        let (_, list) = admin_get(&gw, "/key/list?return_full_object=true", MASTER_KEY).await;
        assert!(!list.to_string().contains(&key));
        assert_eq!(list["keys"][0]["token"], hash);

        // update: open every model, then block.
        let (status, _) = admin(&gw, "/key/update", json!({"key": key, "models": []})).await;
        assert_eq!(status, 200);
        assert_eq!(chat_as(&gw, &key, "gpt-4o", false).await.status(), 200);
        admin(&gw, "/key/update", json!({"key": hash, "blocked": true})).await;
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 401);
        admin(&gw, "/key/update", json!({"key": hash, "blocked": false})).await;
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);

        // delete: 401 at once, on both doors.
        let (status, _) = admin(&gw, "/key/delete", json!({"keys": [key]})).await;
        assert_eq!(status, 200);
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 401);
        assert_eq!(
            grpc.chat(req(&key, "gpt-4o-mini"))
                .await
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            chat_as(&gw, "sk-never-issued", "gpt-4o-mini", false)
                .await
                .status(),
            401
        );
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {MASTER_KEY}").parse().unwrap(),
    );
    r
}

#[tokio::test]
async fn the_admin_service_on_grpc_manages_keys_and_reports_spend() {
    use pb::admin_service_client::AdminServiceClient;
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
        let mut admin = AdminServiceClient::connect(gw.grpc_url()).await.unwrap();
        let made = admin
            .generate_key(authed(pb::GenerateKeyRequest {
                key_alias: "grpc-svc".into(),
                max_budget: Some(5.0),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(made.key.starts_with("sk-"));
        assert_eq!(made.info.as_ref().unwrap().max_budget, Some(5.0));
        assert_eq!(
            chat_as(&gw, &made.key, "gpt-4o-mini", false).await.status(),
            200
        );
        let listed = admin
            .list_keys(authed(pb::ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.keys.len(), 1);
        assert!(!format!("{listed:?}").contains(&made.key));
        let updated = admin
            .update_key(authed(pb::UpdateKeyRequest {
                key: made.key.clone(),
                rpm_limit: Some(100),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.info.unwrap().rpm_limit, Some(100));
        logs_with(&gw, "", 1).await;
        let logs = admin
            .get_spend_logs(authed(pb::GetSpendLogsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logs.logs.len(), 1);
        assert!((logs.logs[0].cost_usd - COST).abs() < 1e-9);
        let report = admin
            .get_spend_report(authed(pb::GetSpendReportRequest {
                group_by: "model".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(report.rows[0].group, "gpt-4o-mini");
        assert_eq!(report.rows[0].requests, 1);
        // A generated key is no admin here either.
        let mut r = tonic::Request::new(pb::ListKeysRequest {});
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", made.key).parse().unwrap(),
        );
        assert_eq!(
            admin.list_keys(r).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let deleted = admin
            .delete_keys(authed(pb::DeleteKeysRequest {
                keys: vec![made.key.clone()],
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.deleted, 1, "{}", b.name);
    }
}

#[tokio::test]
async fn a_budget_reached_mid_stream_is_charged_and_the_next_request_refused() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
        let (_, made) = admin(&gw, "/key/generate", json!({"max_budget": 0.01})).await;
        let key = made["key"].as_str().unwrap().to_string();
        // One streamed request costs 0.017 > 0.01: it is served in full and charged.
        let r = chat_as(&gw, &key, "gpt-4o-mini", true).await;
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
        let r = chat_as(&gw, &key, "gpt-4o-mini", false).await;
        assert_eq!(r.status(), 400, "{}", b.name);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "budget_exceeded");
        assert_eq!(fake.hits(), 1, "no provider call once over budget");
        let mut grpc = pb::ai_api_service_client::AiApiServiceClient::connect(gw.grpc_url())
            .await
            .unwrap();
        let mut req = tonic::Request::new(pb::ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(
            grpc.chat(req).await.unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
}

#[tokio::test]
async fn budgets_reset_when_their_duration_is_up() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let clock = Arc::new(ManualClock::default());
        let gw = b.start(&yaml(&fake), clock.clone()).await;
        let (_, made) = admin(
            &gw,
            "/key/generate",
            json!({"max_budget": 0.01, "budget_duration": "1h"}),
        )
        .await;
        let key = made["key"].as_str().unwrap().to_string();
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 400);
        clock.advance(Duration::from_secs(3601));
        assert_eq!(
            chat_as(&gw, &key, "gpt-4o-mini", false).await.status(),
            200,
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn concurrent_requests_on_one_key_overspend_by_at_most_one_request() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        fake.set(Behavior::Delay(Duration::from_millis(150)));
        let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
        let budget = 2.5 * COST;
        let (_, made) = admin(&gw, "/key/generate", json!({"max_budget": budget})).await;
        let key = made["key"].as_str().unwrap().to_string();
        let mut ok = 0;
        for _round in 0..3 {
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    let (url, key) = (gw.url("/v1/chat/completions"), key.clone());
                    tokio::spawn(async move {
                        client()
                            .post(url)
                            .bearer_auth(key)
                            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16()
                    })
                })
                .collect();
            for c in calls {
                if c.await.unwrap() == 200 {
                    ok += 1;
                }
            }
        }
        let spent = ok as f64 * COST;
        assert!(ok >= 2, "{}: only {ok} served", b.name);
        assert!(
            spent <= budget + COST + 1e-9,
            "{}: {ok} served, {spent} spent of {budget}",
            b.name
        );
        assert_eq!(fake.hits(), ok);
    }
}

#[tokio::test]
async fn key_rate_limits_answer_429() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
        let (_, made) = admin(&gw, "/key/generate", json!({"rpm_limit": 2})).await;
        let key = made["key"].as_str().unwrap().to_string();
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        let r = chat_as(&gw, &key, "gpt-4o-mini", false).await;
        assert_eq!(r.status(), 429, "{}", b.name);
        assert!(r.headers().get("retry-after").is_some());
        // The master key is not limited by it.
        assert_eq!(
            chat_as(&gw, MASTER_KEY, "gpt-4o-mini", false)
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn spend_totals_equal_the_records_and_survive_a_restart() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        let y = yaml(&fake);
        let gw = b.start(&y, Arc::new(SystemClock)).await;
        let (_, made) = admin(&gw, "/key/generate", json!({"key_alias": "svc"})).await;
        let key = made["key"].as_str().unwrap().to_string();
        let hash = made["token"].as_str().unwrap().to_string();
        for _ in 0..5 {
            assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        }
        assert_eq!(
            chat_as(&gw, MASTER_KEY, "gpt-4o-mini", false)
                .await
                .status(),
            200
        );
        let logs = logs_with(&gw, &format!("api_key={key}"), 5).await;
        let sum: f64 = logs.iter().map(|l| l["spend"].as_f64().unwrap()).sum();
        assert!((sum - 5.0 * COST).abs() < 1e-9);
        let (_, report) = admin_get(&gw, "/spend/report?group_by=key", MASTER_KEY).await;
        let row = report
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"] == hash)
            .unwrap();
        assert!(
            (row["spend"].as_f64().unwrap() - sum).abs() < 1e-9,
            "{report}"
        );
        assert_eq!(row["requests"], 5);

        // Stop (flushes), start again on the same data: records and key are still there.
        gw.shutdown().await.unwrap();
        let gw = b.start(&y, Arc::new(SystemClock)).await;
        let logs = logs_with(&gw, "", 6).await;
        assert_eq!(logs.len(), 6, "{}", b.name);
        assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
        let (_, info) = admin_get(&gw, &format!("/key/info?key={hash}"), MASTER_KEY).await;
        assert_eq!(info["info"]["key_alias"], "svc");
    }
}

#[tokio::test]
async fn a_shutdown_mid_load_loses_no_spend_record() {
    for b in backends().await {
        let fake = FakeOpenAi::start().await;
        fake.set(Behavior::Delay(Duration::from_millis(200)));
        let y = yaml(&fake);
        let mut gw = b.start(&y, Arc::new(SystemClock)).await;
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let url = gw.url("/v1/chat/completions");
                tokio::spawn(async move {
                    client()
                        .post(url)
                        .bearer_auth(MASTER_KEY)
                        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                })
            })
            .collect();
        while fake.hits() < 20 {
            tokio::task::yield_now().await;
        }
        let server = gw.begin_shutdown();
        let mut served = 0;
        for c in calls {
            if let Ok(Ok(200)) = c.await {
                served += 1;
            }
        }
        server.await.unwrap().unwrap();
        assert_eq!(served, 20, "in-flight requests finish on shutdown");
        let gw = b.start(&y, Arc::new(SystemClock)).await;
        let logs = logs_with(&gw, "limit=1000", 20).await;
        assert_eq!(logs.len(), 20, "{}", b.name);
    }
}

#[tokio::test]
async fn the_sqlite_file_holds_no_plain_key() {
    let fake = FakeOpenAi::start().await;
    let b = &backends().await[0];
    let gw = b.start(&yaml(&fake), Arc::new(SystemClock)).await;
    let (_, made) = admin(&gw, "/key/generate", json!({"key_alias": "secret-test"})).await;
    let key = made["key"].as_str().unwrap().to_string();
    assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", false).await.status(), 200);
    logs_with(&gw, "", 1).await;
    gw.shutdown().await.unwrap();
    let dir = b.dir.as_ref().unwrap().path();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key),
            "plain key found in the database files"
        );
        assert!(!text.contains(MASTER_KEY));
    }
}

#[tokio::test]
async fn bodies_are_stored_only_with_log_raw_request_response() {
    for raw in [false, true] {
        let fake = FakeOpenAi::start().await;
        let mut y = yaml(&fake);
        y.push_str(&format!(
            "litellm_settings:\n  log_raw_request_response: {raw}\n"
        ));
        let b = &backends().await[0];
        let gw = b.start(&y, Arc::new(SystemClock)).await;
        assert_eq!(
            chat_as(&gw, MASTER_KEY, "gpt-4o-mini", false)
                .await
                .status(),
            200
        );
        let logs = logs_with(&gw, "", 1).await;
        if raw {
            assert_eq!(
                logs[0]["messages"]["messages"][0]["content"], "hi",
                "{}",
                logs[0]
            );
            assert_eq!(
                logs[0]["response"]["choices"][0]["message"]["content"],
                "Hello there, friend!"
            );
        } else {
            assert!(
                logs[0]["messages"].is_null() && logs[0]["response"].is_null(),
                "{}",
                logs[0]
            );
        }
    }
}
