//! The router end to end: retries, fallbacks, cooldowns (time moved by the test), limits,
//! load balancing, streams that fail before or after their first byte. Every deployment is its
//! own fake OpenAI that fails on command and counts attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ai_api::core::router::ManualClock;
use serde_json::{Value, json};
use support::fake_openai::{Behavior, FakeOpenAi};
use support::{MASTER_KEY, client, sse_data, start, start_with};

/// One deployment line: model_name on a fake.
fn deployment(name: &str, fake: &FakeOpenAi, extra: &str) -> String {
    format!(
        "  - model_name: {name}\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: sk-upstream-secret\n      api_base: {}\n{extra}",
        fake.base
    )
}

fn config(deployments: &[String], router: &str) -> String {
    format!(
        "model_list:\n{}general_settings:\n  master_key: {MASTER_KEY}\nrouter_settings:\n{router}",
        deployments.concat()
    )
}

async fn chat(gw: &support::TestGateway, model: &str, extra: Value) -> reqwest::Response {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn retryable_failures_are_retried_then_succeed() {
    let fake = FakeOpenAi::start().await;
    let gw = start(
        &config(&[deployment("a", &fake, "")], "  num_retries: 2\n"),
        &[],
    )
    .await;
    fake.fail_next(2, 503);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-attempted-retries"), "2");
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let fake = FakeOpenAi::start().await;
    let gw = start(
        &config(&[deployment("a", &fake, "")], "  num_retries: 3\n"),
        &[],
    )
    .await;
    fake.fail_next(1, 400);
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 400);
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn retries_run_out_and_the_last_error_is_returned() {
    let fake = FakeOpenAi::start().await;
    let gw = start(
        &config(&[deployment("a", &fake, "")], "  num_retries: 1\n"),
        &[],
    )
    .await;
    fake.fail_next(5, 500);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(r.status(), 500);
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn a_retry_prefers_another_deployment_of_the_group() {
    let (one, two) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let gw = start(
        &config(
            &[deployment("a", &one, ""), deployment("a", &two, "")],
            "  num_retries: 1\n",
        ),
        &[],
    )
    .await;
    one.fail_next(100, 502);
    two.fail_next(100, 502);
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 502);
    assert_eq!(
        (one.hits(), two.hits()),
        (1, 1),
        "each deployment tried once"
    );
}

#[tokio::test]
async fn an_exhausted_group_falls_back_along_the_chain() {
    let (a, b, c) = (
        FakeOpenAi::start().await,
        FakeOpenAi::start().await,
        FakeOpenAi::start().await,
    );
    let yaml = config(
        &[
            deployment("a", &a, ""),
            deployment("b", &b, ""),
            deployment("c", &c, ""),
        ],
        "  fallbacks: [{a: [b, c]}]\n  allowed_fails: 100\n",
    );
    let gw = start(&yaml, &[]).await;
    a.fail_next(1, 503);
    b.fail_next(1, 500);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), "c");
    assert_eq!(header(&r, "x-litellm-attempted-fallbacks"), "2");
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 1));
}

#[tokio::test]
async fn per_request_fallbacks_and_num_retries_are_honoured_and_not_forwarded() {
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let gw = start(
        &config(
            &[deployment("a", &a, ""), deployment("b", &b, "")],
            "  allowed_fails: 100\n",
        ),
        &[],
    )
    .await;
    a.fail_next(2, 500);
    let r = chat(&gw, "a", json!({"num_retries": 1, "fallbacks": ["b"]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), "b");
    assert_eq!(a.hits(), 2);
    let sent = b.last().body;
    assert!(
        sent.get("fallbacks").is_none() && sent.get("num_retries").is_none(),
        "{sent}"
    );
}

#[tokio::test]
async fn context_window_errors_go_to_context_window_fallbacks_only() {
    let (small, big, other) = (
        FakeOpenAi::start().await,
        FakeOpenAi::start().await,
        FakeOpenAi::start().await,
    );
    let yaml = config(
        &[
            deployment("small", &small, ""),
            deployment("big", &big, ""),
            deployment("other", &other, ""),
        ],
        "  context_window_fallbacks: [{small: [big]}]\n  fallbacks: [{small: [other]}]\n",
    );
    let gw = start(&yaml, &[]).await;
    small.set(Behavior::Status(
        400,
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.into(),
    ));
    let r = chat(&gw, "small", json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), "big");
    assert_eq!(other.hits(), 0);

    // A plain 400 is the client's: no fallback.
    small.set(Behavior::Status(
        400,
        r#"{"error":{"message":"bad temperature","type":"invalid_request_error"}}"#.into(),
    ));
    assert_eq!(chat(&gw, "small", json!({})).await.status(), 400);
    assert_eq!((big.hits(), other.hits()), (1, 0));
}

#[tokio::test]
async fn a_cooled_down_deployment_is_skipped_straight_to_the_fallback_until_its_time_is_up() {
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let clock = Arc::new(ManualClock::default());
    let yaml = config(
        &[deployment("a", &a, ""), deployment("b", &b, "")],
        "  fallbacks: [{a: [b]}]\n  allowed_fails: 0\n  cooldown_time: 60\n  num_retries: 3\n",
    );
    let gw = start_with(&yaml, &[], "/ai-api", clock.clone()).await;
    a.fail_next(1, 503);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(header(&r, "x-litellm-model-group"), "b");
    assert_eq!(
        a.hits(),
        1,
        "the single deployment cooled at once: no retry ladder"
    );
    let ready: Value = client()
        .get(gw.url("/health/readiness"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["deployments_in_cooldown"][0]["model_group"], "a");

    // While it cools, requests go straight to the fallback.
    for _ in 0..3 {
        let r = chat(&gw, "a", json!({})).await;
        assert_eq!(header(&r, "x-litellm-model-group"), "b");
    }
    assert_eq!(a.hits(), 1);

    clock.advance(Duration::from_secs(61));
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(header(&r, "x-litellm-model-group"), "a");
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn the_last_deployment_without_a_fallback_is_never_cooled() {
    let a = FakeOpenAi::start().await;
    let gw = start(
        &config(
            &[deployment("a", &a, "")],
            "  allowed_fails: 0\n  cooldown_time: 600\n",
        ),
        &[],
    )
    .await;
    a.fail_next(3, 500);
    for _ in 0..3 {
        assert_eq!(chat(&gw, "a", json!({})).await.status(), 500);
    }
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 200);
}

#[tokio::test]
async fn every_deployment_cooling_is_a_503_saying_so() {
    let (one, two) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let yaml = config(
        &[deployment("a", &one, ""), deployment("b", &two, "")],
        "  fallbacks: [{a: [b]}, {b: [a]}]\n  allowed_fails: 0\n  cooldown_time: 600\n",
    );
    let gw = start(&yaml, &[]).await;
    one.fail_next(10, 500);
    two.fail_next(10, 500);
    // a fails and cools, falls back to b, which fails and cools too.
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 500);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cooling down"),
        "{body}"
    );
    assert_eq!((one.hits(), two.hits()), (1, 1));
}

#[tokio::test]
async fn rpm_limits_answer_429_with_retry_after() {
    let a = FakeOpenAi::start().await;
    let gw = start(&config(&[deployment("a", &a, "      rpm: 1\n")], ""), &[]).await;
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 200);
    let r = chat(&gw, "a", json!({})).await;
    assert_eq!(r.status(), 429);
    let after: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_deployment_at_its_limit_is_skipped_for_another() {
    let (one, two) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let gw = start(
        &config(
            &[
                deployment("a", &one, "      rpm: 1\n"),
                deployment("a", &two, "      rpm: 1\n"),
            ],
            "",
        ),
        &[],
    )
    .await;
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 200);
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 200);
    assert_eq!((one.hits(), two.hits()), (1, 1));
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 429);
}

#[tokio::test]
async fn least_busy_spreads_concurrent_requests_evenly() {
    let (one, two) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    one.set(Behavior::Delay(Duration::from_millis(400)));
    two.set(Behavior::Delay(Duration::from_millis(400)));
    let gw = start(
        &config(
            &[deployment("a", &one, ""), deployment("a", &two, "")],
            "  routing_strategy: least-busy\n",
        ),
        &[],
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                client()
                    .post(url)
                    .bearer_auth(MASTER_KEY)
                    .json(&json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!((one.hits(), two.hits()), (5, 5));
}

#[tokio::test]
async fn weights_steer_simple_shuffle() {
    let (heavy, light) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let gw = start(
        &config(
            &[
                deployment("a", &heavy, "      weight: 9\n"),
                deployment("a", &light, "      weight: 1\n"),
            ],
            "",
        ),
        &[],
    )
    .await;
    for _ in 0..200 {
        chat(&gw, "a", json!({})).await;
    }
    // 90% expected; 200 draws keep it far above 75% with overwhelming probability.
    assert!(heavy.hits() > 150, "{} vs {}", heavy.hits(), light.hits());
}

#[tokio::test]
async fn a_stream_failing_before_its_first_byte_is_retried() {
    let a = FakeOpenAi::start().await;
    let gw = start(
        &config(&[deployment("a", &a, "")], "  num_retries: 1\n"),
        &[],
    )
    .await;
    a.fail_next(1, 503);
    let r = chat(&gw, "a", json!({"stream": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-attempted-retries"), "1");
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn a_stream_failing_after_its_first_byte_is_not_retried() {
    let a = FakeOpenAi::start().await;
    let gw = start(
        &config(&[deployment("a", &a, "")], "  num_retries: 3\n"),
        &[],
    )
    .await;
    a.set(Behavior::CutStream);
    let r = chat(&gw, "a", json!({"stream": true})).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_per_request_timeout_bounds_the_call() {
    let a = FakeOpenAi::start().await;
    let gw = start(&config(&[deployment("a", &a, "")], ""), &[]).await;
    a.set(Behavior::Delay(Duration::from_secs(10)));
    let r = chat(&gw, "a", json!({"timeout": 0.2})).await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn the_grpc_door_reports_routing_in_metadata() {
    use ai_api::grpc::pb;
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let gw = start(
        &config(
            &[deployment("a", &a, ""), deployment("b", &b, "")],
            "  fallbacks: [{a: [b]}]\n",
        ),
        &[],
    )
    .await;
    a.fail_next(1, 500);
    let mut client = pb::ai_api_service_client::AiApiServiceClient::connect(gw.grpc_url())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::ChatRequest {
        model: "a".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {MASTER_KEY}").parse().unwrap(),
    );
    let resp = client.chat(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-litellm-model-group").unwrap(), "b");
    assert_eq!(
        resp.metadata()
            .get("x-litellm-attempted-fallbacks")
            .unwrap(),
        "1"
    );
}

#[tokio::test]
async fn grpc_health_reports_a_group_whose_deployments_all_cool_down() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    let clock = Arc::new(ManualClock::default());
    let yaml = config(
        &[deployment("a", &a, ""), deployment("b", &b, "")],
        "  fallbacks: [{a: [b]}]\n  allowed_fails: 0\n  cooldown_time: 60\n",
    );
    let gw = start_with(&yaml, &[], "/ai-api", clock.clone()).await;
    let channel = tonic::transport::Channel::from_shared(gw.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
        }
    };
    a.fail_next(1, 503);
    assert_eq!(chat(&gw, "a", json!({})).await.status(), 200);
    // The watcher runs twice a second: wait (bounded) for it to see the cooldown.
    let mut seen = None;
    for _ in 0..40 {
        seen = status("ai_api.v1.AiApiService/a").await.ok();
        if seen == Some(ServingStatus::NotServing as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(ServingStatus::NotServing as i32));
    assert_eq!(
        status("ai_api.v1.AiApiService/b").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        status("ai_api.v1.AiApiService").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let _ = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}
