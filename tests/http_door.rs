//! The OpenAI REST door, end to end: the real server on port 0 in front of a fake OpenAI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_openai::{Behavior, FakeOpenAi};
use support::{MASTER_KEY, client, openai_config, sse_data, start};

async fn setup(extra: &str) -> (FakeOpenAi, support::TestGateway) {
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(
        &fake.base,
        &[("gpt-4o-mini", "gpt-4o-mini"), ("gpt-4o", "gpt-4o")],
        extra,
    );
    let gw = start(&yaml, &[]).await;
    (fake, gw)
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": stream})
}

async fn post(gw: &support::TestGateway, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn chat_completion_is_translated_and_costed() {
    let (fake, gw) = setup("").await;
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(resp.headers()["x-litellm-model-group"], "gpt-4o-mini");
    let cost: f64 = resp.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = 12.0 * 1.5e-7 + 5.0 * 6e-7;
    assert!((cost - expected).abs() < 1e-12, "cost {cost}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello there, friend!"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 17);
    let sent = fake.last();
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["messages"][0]["content"], "Hi");
    assert!(sent.body.get("stream").is_none());
}

#[tokio::test]
async fn both_paths_and_the_client_request_id_are_honoured() {
    let (_fake, gw) = setup("").await;
    let resp = client()
        .post(gw.url("/chat/completions"))
        .header("x-api-key", MASTER_KEY)
        .header("x-request-id", "my-req-42")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "my-req-42");
}

#[tokio::test]
async fn streamed_chunks_reassemble_and_end_with_done() {
    let (fake, gw) = setup("").await;
    let resp = post(&gw, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello there, friend!");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage was not asked for"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    // The gateway asks for usage upstream anyway (for cost).
    assert_eq!(fake.last().body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn include_usage_gives_the_final_usage_chunk() {
    let (_fake, gw) = setup("").await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 12);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn tool_calls_go_up_and_come_back_with_finish_reason_tool_calls() {
    let (fake, gw) = setup("").await;
    fake.set(Behavior::ToolCalls);
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto"
    });
    let resp: Value = post(&gw, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let msg = &resp["choices"][0]["message"];
    assert_eq!(resp["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["tool_calls"][0]["id"], "call_abc");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    let sent = fake.last().body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");

    // Streamed: argument pieces arrive as deltas that concatenate to the JSON.
    let mut body = body;
    body["stream"] = json!(true);
    let events = sse_data(
        &post(&gw, "/v1/chat/completions", &body)
            .await
            .text()
            .await
            .unwrap(),
    );
    let args: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");

    // The tool result goes back up as a tool message.
    let follow = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}
    ]});
    fake.set(Behavior::Normal);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &follow).await.status(),
        200
    );
    let sent = fake.last().body;
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_abc");
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_abc");
}

#[tokio::test]
async fn vision_parts_are_passed_to_openai() {
    let (fake, gw) = setup("").await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
    ]}]});
    assert_eq!(post(&gw, "/v1/chat/completions", &body).await.status(), 200);
    let sent = fake.last().body;
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["url"],
        "https://example.com/cat.png"
    );
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["detail"],
        "high"
    );
}

#[tokio::test]
async fn models_are_listed_and_fetched() {
    let (_fake, gw) = setup("").await;
    let list: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o"]);
    let one = client()
        .get(gw.url("/models/gpt-4o"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["object"], "model");
    let missing = client()
        .get(gw.url("/models/nope"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn images_and_embeddings_work() {
    let (fake, gw) = setup("").await;
    let img: Value = post(
        &gw,
        "/v1/images/generations",
        &json!({"model": "gpt-4o", "prompt": "a cat", "size": "1024x1024"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(img["data"][0]["url"], "https://images.example/cat.png");
    assert_eq!(fake.last().body["prompt"], "a cat");

    let emb = post(
        &gw,
        "/embeddings",
        &json!({"model": "gpt-4o", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(emb.status(), 200);
    let emb: Value = emb.json().await.unwrap();
    assert_eq!(emb["data"][1]["embedding"], json!([0.5, -0.25, 1.0]));
    assert_eq!(emb["usage"]["prompt_tokens"], 8);

    // The OpenAI SDK asks for base64 by default: little-endian f32s.
    let emb: Value = post(
        &gw,
        "/embeddings",
        &json!({"model": "gpt-4o", "input": "a", "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let b64 = emb["data"][0]["embedding"].as_str().unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, vec![0.5, -0.25, 0.0]);
}

async fn assert_openai_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(
        body["error"].get("param").is_some() && body["error"].get("code").is_some(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let (fake, gw) = setup("").await;
    let none = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let b = assert_openai_error(none, 401).await;
    assert_eq!(b["error"]["type"], "authentication_error");
    let wrong = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-nope")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_openai_error(wrong, 401).await;
    let models = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_openai_error(models, 401).await;
    assert_eq!(fake.hits(), 0);
    // Health needs no key.
    assert_eq!(
        client()
            .get(gw.url("/health/liveliness"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.url("/health/readiness"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn unknown_models_and_paths_are_404() {
    let (fake, gw) = setup("").await;
    let mut body = chat_body(false);
    body["model"] = json!("gpt-17");
    let b = assert_openai_error(post(&gw, "/v1/chat/completions", &body).await, 404).await;
    assert!(b["error"]["message"].as_str().unwrap().contains("gpt-17"));
    assert_openai_error(
        client().get(gw.url("/no/such/path")).send().await.unwrap(),
        404,
    )
    .await;
    assert_openai_error(
        client()
            .get(format!("http://{}/elsewhere", gw.http_addr))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn malformed_requests_are_400_and_never_forwarded() {
    let (fake, gw) = setup("").await;
    let bad_json = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body("{\"model\": \"gpt-4o-mini\", \"messages\": [")
        .send()
        .await
        .unwrap();
    let b = assert_openai_error(bad_json, 400).await;
    assert_eq!(b["error"]["code"], "invalid_json");
    assert!(b["error"]["param"].is_null(), "{b}");
    let wrong_type = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": "hi"}),
    )
    .await;
    let b = assert_openai_error(wrong_type, 400).await;
    assert_eq!(b["error"]["param"], "messages");
    let range = post(&gw, "/v1/chat/completions", &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 7})).await;
    let b = assert_openai_error(range, 400).await;
    assert_eq!(b["error"]["param"], "temperature");
    let role = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_openai_error(role, 400).await;
    let empty = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": []}),
    )
    .await;
    assert_openai_error(empty, 400).await;
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let fake = FakeOpenAi::start().await;
    let mut yaml = openai_config(&fake.base, &[("gpt-4o-mini", "gpt-4o-mini")], "");
    yaml.push_str("  max_request_size_mb: 0.001\n");
    let gw = start(&yaml, &[]).await;
    let big = "x".repeat(4096);
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert_openai_error(resp, 413).await;
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn provider_errors_keep_their_status_and_message() {
    let (fake, gw) = setup("").await;
    fake.set(Behavior::Status(429, r#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.into()));
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(resp.headers()["retry-after"], "3");
    let b = assert_openai_error(resp, 429).await;
    assert_eq!(b["error"]["message"], "Rate limit reached for gpt-4o-mini");
    assert_eq!(b["error"]["code"], "rate_limit_exceeded");

    fake.set(Behavior::Status(400, r#"{"error":{"message":"Invalid 'messages[0].content'","type":"invalid_request_error","param":"messages","code":null}}"#.into()));
    let b = assert_openai_error(
        post(&gw, "/v1/chat/completions", &chat_body(false)).await,
        400,
    )
    .await;
    assert_eq!(b["error"]["message"], "Invalid 'messages[0].content'");

    fake.set(Behavior::Status(500, "internal oops".into()));
    assert_openai_error(
        post(&gw, "/v1/chat/completions", &chat_body(false)).await,
        500,
    )
    .await;
    // Before the first byte, a stream's upstream error is the call's status.
    assert_openai_error(
        post(&gw, "/v1/chat/completions", &chat_body(true)).await,
        500,
    )
    .await;

    fake.set(Behavior::Garbage);
    assert_openai_error(
        post(&gw, "/v1/chat/completions", &chat_body(false)).await,
        502,
    )
    .await;
}

#[tokio::test]
async fn a_slow_provider_times_out_with_504() {
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(
        &fake.base,
        &[("gpt-4o-mini", "gpt-4o-mini")],
        "      timeout: 0.2\n",
    );
    let gw = start(&yaml, &[]).await;
    fake.set(Behavior::Delay(Duration::from_secs(5)));
    let b = assert_openai_error(
        post(&gw, "/v1/chat/completions", &chat_body(false)).await,
        504,
    )
    .await;
    assert_eq!(b["error"]["type"], "timeout_error");
}

#[tokio::test]
async fn a_stream_cut_by_the_provider_ends_with_an_error_event_not_done() {
    let (fake, gw) = setup("").await;
    fake.set(Behavior::CutStream);
    let resp = post(&gw, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    let events = sse_data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn a_cancelled_stream_closes_the_upstream_connection() {
    let (fake, gw) = setup("").await;
    fake.set(Behavior::EndlessStream);
    let mut resp = post(&gw, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        assert!(resp.chunk().await.unwrap().is_some());
    }
    drop(resp);
    assert!(
        fake.stream_closed_within(Duration::from_secs(1)).await,
        "upstream stream still open"
    );
}

#[tokio::test]
async fn an_unset_provider_key_is_a_config_error_naming_the_variable() {
    let yaml = "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: os.environ/MY_OPENAI_KEY\n";
    let gw = start(yaml, &[]).await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let b = assert_openai_error(resp, 500).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MY_OPENAI_KEY")
    );
}

#[tokio::test]
async fn the_root_path_can_be_empty() {
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(&fake.base, &[("gpt-4o-mini", "gpt-4o-mini")], "");
    let gw = support::start_at(&yaml, &[], "/").await;
    let resp = client()
        .post(format!("http://{}/v1/chat/completions", gw.http_addr))
        .bearer_auth(MASTER_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_upstream_key_is_never_echoed() {
    let (fake, gw) = setup("").await;
    fake.set(Behavior::Status(401, r#"{"error":{"message":"Incorrect API key provided: sk-upst***cret","type":"invalid_request_error","code":"invalid_api_key"}}"#.into()));
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false)).await;
    let text = resp.text().await.unwrap();
    assert!(!text.contains("sk-upstream-secret"), "{text}");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let (fake, mut gw) = setup("").await;
    fake.set(Behavior::Delay(Duration::from_millis(300)));
    let url = gw.url("/v1/chat/completions");
    let req = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(MASTER_KEY)
            .json(&chat_body(true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    // Wait until the request reached the provider, then stop the server.
    while fake.hits() == 0 {
        tokio::task::yield_now().await;
    }
    let server = gw.begin_shutdown();
    let body = req.await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_cost_with_bounded_labels() {
    let (_fake, gw) = setup("").await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body(false))
            .await
            .status(),
        200
    );
    let mut missing = chat_body(false);
    missing["model"] = json!("no-such-model-with-a-long-name");
    assert_eq!(
        post(&gw, "/v1/chat/completions", &missing).await.status(),
        404
    );
    let resp = client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"ai_api_requests_total{door="http",model_group="gpt-4o-mini",deployment="gpt-4o-mini-0",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ai_api_tokens_total{model_group="gpt-4o-mini",direction="in"} 12"#),
        "{text}"
    );
    assert!(text.contains("ai_api_spend_usd_total"), "{text}");
    assert!(
        text.contains("ai_api_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        !text.contains("no-such-model-with-a-long-name"),
        "client input leaked into labels"
    );
    assert!(text.contains(r#"model_group="unknown""#));
}

/// The chat route is served without the router (`http::Door`): its edges must answer as the
/// router's routes do — other methods 405, a trailing slash 404, both in OpenAI's shape; a
/// generated request id on every answer, errors included; a bad key 401.
#[tokio::test]
async fn the_direct_chat_route_keeps_the_routers_edges() {
    let (fake, gw) = setup("").await;
    let url = gw.url("/v1/chat/completions");

    let get = client()
        .get(&url)
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let b: Value = get.json().await.unwrap();
    assert_eq!(b["error"]["code"], "method_not_allowed");

    let slash = post(&gw, "/v1/chat/completions/", &chat_body(false)).await;
    assert_eq!(slash.status(), 404);
    let b: Value = slash.json().await.unwrap();
    assert_eq!(b["error"]["code"], "route_not_found");

    let bad_key = client()
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 401);
    let id = bad_key.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        uuid::Uuid::try_parse(&id).map(|u| u.get_version_num()),
        Ok(7),
        "a new UUIDv7: {id}"
    );
    let b: Value = bad_key.json().await.unwrap();
    assert!(b["error"]["message"].is_string());

    let not_json = client()
        .post(&url)
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert!(not_json.headers().get("x-request-id").is_some());
    assert_eq!(fake.hits(), 0);

    // Two requests, two ids.
    let a = post(&gw, "/v1/chat/completions", &chat_body(false)).await;
    let b = post(&gw, "/chat/completions", &chat_body(false)).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}

/// Request ids on every route, not only the direct chat path: a routed answer (models, an
/// unknown path) carries the client's id or a new UUID.
#[tokio::test]
async fn every_route_answers_with_a_request_id() {
    let (_fake, gw) = setup("").await;
    let models = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(MASTER_KEY)
        .header("x-request-id", "mine-7")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(models.headers()["x-request-id"], "mine-7");
    let unknown = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let id = unknown.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        uuid::Uuid::try_parse(id).map(|u| u.get_version_num()),
        Ok(7),
        "a new UUIDv7: {id}"
    );
}

/// Short deadlines for the tests below: a head within 300 ms, 600 ms of keep-alive idleness,
/// a write may wait 600 ms for the client to read.
async fn setup_with_deadlines() -> (FakeOpenAi, support::TestGateway) {
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(&fake.base, &[("gpt-4o-mini", "gpt-4o-mini")], "");
    let gw = support::start_tuned_with(&yaml, |o| {
        o.http_deadlines = ai_api::http::deadline::Deadlines {
            head: Duration::from_millis(300),
            idle: Duration::from_millis(600),
            send: Duration::from_millis(600),
        };
    })
    .await;
    (fake, gw)
}

/// Reads until the server closes the connection (end of file or reset) and returns what came,
/// or panics if it is still open after `within`.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "the connection is still open: {got:?}");
    got
}

/// Opens a connection to the door and sends `bytes` on it.
async fn send_raw(gw: &support::TestGateway, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp
}

/// Waits for a stalled client's connection (opened at `started`) to be closed: not before
/// its deadline, within 5 s, and with no answer.
async fn closed_as_stalled(tcp: &mut tokio::net::TcpStream, started: std::time::Instant) {
    let got = read_until_closed(tcp, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before its deadline: {:?}",
        started.elapsed()
    );
    assert!(!got.contains("200 OK"), "{got}");
}

#[tokio::test]
async fn a_client_that_never_completes_a_request_head_is_disconnected() {
    let (_fake, gw) = setup_with_deadlines().await;

    // Half a head, then nothing (slowloris).
    let started = std::time::Instant::now();
    let mut half = send_raw(
        &gw,
        b"POST /ai-api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    // A connection that never says anything at all.
    let mut silent = send_raw(&gw, b"").await;
    closed_as_stalled(&mut half, started).await;
    read_until_closed(&mut silent, Duration::from_secs(5)).await;

    // The door still serves.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body(false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_client_that_stops_sending_its_request_body_is_disconnected() {
    let (fake, gw) = setup_with_deadlines().await;
    let started = std::time::Instant::now();
    let mut tcp = send_raw(
        &gw,
        b"POST /ai-api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\
          Authorization: Bearer sk-test-master\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"model\": \"gpt-4o-mini\",",
    )
    .await;
    closed_as_stalled(&mut tcp, started).await;
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let (_fake, gw) = setup_with_deadlines().await;
    let mut tcp = send_raw(
        &gw,
        b"GET /ai-api/health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    // The answer comes, then the connection is closed once idle for longer than allowed.
    let got = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.ends_with("\"I'm alive!\""), "{got}");
}

#[tokio::test]
async fn an_http2_client_is_served_and_its_frames_between_requests_start_no_head_deadline() {
    use tokio::io::AsyncWriteExt;
    let (_fake, gw) = setup_with_deadlines().await;
    // The door speaks HTTP/2 to a client that knows it does (h2c).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    // A connection that opens with the preface and settings, then sends only pings: bytes with
    // no request in flight, but frames, not a request head. It is closed as idle (600 ms after
    // its preface), not 300 ms after its first ping as a half-sent head would be.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const PING: [u8; 17] = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let started = std::time::Instant::now();
    let mut tcp = send_raw(&gw, &[PREFACE, &SETTINGS[..]].concat()).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(&PING).await.unwrap();
    }
    read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "closed by the head deadline after a ping: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_disconnected_and_the_stream_released() {
    use tokio::io::AsyncWriteExt;
    let (fake, gw) = setup_with_deadlines().await;
    fake.set(Behavior::FloodStream);
    // A client with a small receive window that asks for a stream and never reads it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(gw.http_addr).await.unwrap();
    let body = chat_body(true).to_string();
    let head = format!(
        "POST /ai-api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {MASTER_KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = std::time::Instant::now();
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The gateway stops writing to it; after the send deadline it lets go of the provider's
    // stream and of the connection.
    assert!(
        fake.stream_closed_within(Duration::from_secs(10)).await,
        "the provider's stream is still held for a client that does not read"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "released before the deadline: {:?}",
        started.elapsed()
    );
    let got = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &got[..got.len().min(200)]
    );
    assert!(!got.contains("[DONE]"));
}

#[tokio::test]
async fn deadlines_never_cut_a_request_in_flight() {
    let (fake, gw) = setup_with_deadlines().await;

    // A provider slower than both deadlines.
    fake.set(Behavior::Delay(Duration::from_millis(900)));
    let resp = post(&gw, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("Hello there"));

    // A stream that lasts longer than both: its chunks keep coming while the client sends
    // nothing.
    fake.set(Behavior::EndlessStream);
    let mut resp = post(&gw, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let mut late = 0usize;
    while started.elapsed() < Duration::from_millis(1500) {
        let chunk = tokio::time::timeout(Duration::from_secs(2), resp.chunk())
            .await
            .expect("the stream stalled")
            .expect("the stream was cut");
        assert!(chunk.is_some(), "the stream ended");
        if started.elapsed() > Duration::from_millis(1000) {
            late += 1;
        }
    }
    assert!(late > 0, "no chunk after the deadlines had passed");
}
