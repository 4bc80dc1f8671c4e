//! The gRPC door, end to end, with the generated tonic client: the real server on port 0 in
//! front of a fake OpenAI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use ai_api::grpc::pb;
use ai_api::grpc::pb::ai_api_service_client::AiApiServiceClient;
use futures_util::StreamExt;
use support::fake_openai::{Behavior, FakeOpenAi};
use support::{MASTER_KEY, openai_config, start};
use tonic::Code;
use tonic::transport::Channel;

async fn setup() -> (
    FakeOpenAi,
    support::TestGateway,
    AiApiServiceClient<Channel>,
) {
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(
        &fake.base,
        &[("gpt-4o-mini", "gpt-4o-mini"), ("gpt-4o", "gpt-4o")],
        "      timeout: 2\n",
    );
    let gw = start(&yaml, &[]).await;
    let client = AiApiServiceClient::connect(gw.grpc_url()).await.unwrap();
    (fake, gw, client)
}

async fn channel(gw: &support::TestGateway) -> Channel {
    Channel::from_shared(gw.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {MASTER_KEY}").parse().unwrap(),
    );
    r
}

fn user(text: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        role: "user".into(),
        content: text.into(),
        ..Default::default()
    }
}

fn chat_request(model: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.into(),
        messages: vec![user("Explain containerization")],
        ..Default::default()
    }
}

fn stream_request(model: &str) -> pb::StreamChatRequest {
    pb::StreamChatRequest {
        model: model.into(),
        messages: vec![user("Explain containerization")],
        ..Default::default()
    }
}

#[tokio::test]
async fn chat_answers_with_usage_and_cost() {
    let (fake, _gw, mut client) = setup().await;
    let resp = client
        .chat(authed(chat_request("gpt-4o-mini")))
        .await
        .unwrap();
    let id = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        uuid::Uuid::try_parse(id).map(|u| u.get_version_num()),
        Ok(7),
        "a new UUIDv7: {id}"
    );
    assert_eq!(
        resp.metadata().get("x-litellm-model-group").unwrap(),
        "gpt-4o-mini"
    );
    let r = resp.into_inner();
    let choice = &r.choices[0];
    assert_eq!(
        choice.message.as_ref().unwrap().content,
        "Hello there, friend!"
    );
    assert_eq!(choice.message.as_ref().unwrap().role, "assistant");
    assert_eq!(choice.finish_reason, pb::FinishReason::Stop as i32);
    let usage = r.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 5, 17)
    );
    assert!(usage.cost_usd > 0.0);
    assert_eq!(
        fake.last().body["messages"][0]["content"],
        "Explain containerization"
    );
}

#[tokio::test]
async fn stream_chat_sends_deltas_then_finish_reason_with_usage() {
    let (fake, _gw, mut client) = setup().await;
    let mut stream = client
        .stream_chat(authed(stream_request("gpt-4o-mini")))
        .await
        .unwrap()
        .into_inner();
    let mut msgs = Vec::new();
    while let Some(m) = stream.next().await {
        msgs.push(m.unwrap());
    }
    let text: String = msgs
        .iter()
        .flat_map(|m| m.choices.iter())
        .filter_map(|c| c.delta.as_ref().map(|d| d.content.clone()))
        .collect();
    assert_eq!(text, "Hello there, friend!");
    let last = msgs.last().unwrap();
    assert_eq!(last.choices[0].finish_reason, pb::FinishReason::Stop as i32);
    let usage = last.usage.as_ref().unwrap();
    assert_eq!(usage.total_tokens, 17);
    assert!(usage.cost_usd > 0.0);
    assert!(msgs[..msgs.len() - 1].iter().all(|m| m.usage.is_none()));
    assert_eq!(fake.last().body["stream"], true);
}

#[tokio::test]
async fn tool_calls_come_back_typed() {
    let (fake, _gw, mut client) = setup().await;
    fake.set(Behavior::ToolCalls);
    let params: prost_types::Struct = prost_types::Struct {
        fields: [(
            "type".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("object".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    let mut req = chat_request("gpt-4o-mini");
    req.tools = vec![pb::Tool {
        r#type: "function".into(),
        function: Some(pb::FunctionDefinition {
            name: "get_weather".into(),
            description: "Weather of a city".into(),
            parameters: Some(params),
            strict: None,
        }),
    }];
    req.tool_choice = Some(pb::ToolChoice {
        choice: Some(pb::tool_choice::Choice::Mode("required".into())),
    });
    let r = client.chat(authed(req)).await.unwrap().into_inner();
    let call = &r.choices[0].message.as_ref().unwrap().tool_calls[0];
    assert_eq!(call.id, "call_abc");
    assert_eq!(
        call.function.as_ref().unwrap().arguments,
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(
        r.choices[0].finish_reason,
        pb::FinishReason::ToolCalls as i32
    );
    let sent = fake.last().body;
    assert_eq!(sent["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(sent["tool_choice"], "required");
}

#[tokio::test]
async fn models_images_and_embeddings() {
    let (_fake, _gw, mut client) = setup().await;
    let models = client
        .list_models(authed(pb::ListModelsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = models.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o"]);

    let img = client
        .generate_image(authed(pb::GenerateImageRequest {
            model: "gpt-4o".into(),
            prompt: "a cat".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(img.images[0].url, "https://images.example/cat.png");

    let emb = client
        .embed(authed(pb::EmbedRequest {
            model: "gpt-4o".into(),
            input: vec!["a".into(), "b".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(emb.embeddings.len(), 2);
    assert_eq!(emb.embeddings[1].values, vec![0.5, -0.25, 1.0]);
}

#[tokio::test]
async fn errors_map_to_grpc_codes() {
    let (fake, _gw, mut client) = setup().await;
    let e = client
        .chat(tonic::Request::new(chat_request("gpt-4o-mini")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut bad = tonic::Request::new(chat_request("gpt-4o-mini"));
    bad.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        client.chat(bad).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        client
            .chat(authed(chat_request("nope")))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut r = chat_request("gpt-4o-mini");
    r.temperature = Some(9.0);
    assert_eq!(
        client.chat(authed(r)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = chat_request("gpt-4o-mini");
    r.messages[0].role = "robot".into();
    assert_eq!(
        client.chat(authed(r)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(fake.hits(), 0);

    fake.set(Behavior::Status(
        429,
        r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#
            .into(),
    ));
    let e = client
        .chat(authed(chat_request("gpt-4o-mini")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.message(), "slow down");
    assert_eq!(e.metadata().get("retry-after").unwrap(), "3");

    fake.set(Behavior::Garbage);
    assert_eq!(
        client
            .chat(authed(chat_request("gpt-4o-mini")))
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );

    fake.set(Behavior::Delay(Duration::from_secs(10)));
    assert_eq!(
        client
            .chat(authed(chat_request("gpt-4o-mini")))
            .await
            .unwrap_err()
            .code(),
        Code::DeadlineExceeded
    );
}

#[tokio::test]
async fn a_missing_provider_key_is_failed_precondition() {
    let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: os.environ/UNSET_KEY_VAR\n";
    let gw = start(yaml, &[]).await;
    let mut client = AiApiServiceClient::connect(gw.grpc_url()).await.unwrap();
    let e = client.chat(chat_request("m")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("UNSET_KEY_VAR"));
}

#[tokio::test]
async fn the_clients_deadline_reaches_the_provider_call() {
    let (fake, _gw, mut client) = setup().await;
    fake.set(Behavior::Delay(Duration::from_secs(10)));
    let mut req = authed(chat_request("gpt-4o-mini"));
    req.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let e = client.chat(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_cancelled_stream_closes_the_upstream_connection() {
    let (fake, _gw, mut client) = setup().await;
    fake.set(Behavior::EndlessStream);
    let mut stream = client
        .stream_chat(authed(stream_request("gpt-4o-mini")))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    assert!(
        fake.stream_closed_within(Duration::from_secs(1)).await,
        "upstream stream still open"
    );
}

#[tokio::test]
async fn reflection_lists_the_services_without_a_key() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let (_fake, gw, _client) = setup().await;
    let mut refl = ServerReflectionClient::new(channel(&gw).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"ai_api.v1.AiApiService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // v1alpha too, for older grpcurl.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaReq;
    let mut alpha = Alpha::new(channel(&gw).await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaReq::FileContainingSymbol(
            "ai_api.v1.AiApiService".into(),
        )),
    };
    let mut answers = alpha
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn health_is_served_overall_and_per_service_without_a_key() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (_fake, gw, _client) = setup().await;
    let mut health = HealthClient::new(channel(&gw).await);
    for service in ["", "ai_api.v1.AiApiService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

/// Calls the API service does not have, and services the door does not have, are
/// `UNIMPLEMENTED` — the API's own calls are served ahead of the other services' routes.
#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented() {
    let (_fake, gw, _client) = setup().await;
    for path in [
        "/ai_api.v1.AiApiService/NoSuchMethod",
        "/ai_api.v1.NoSuchService/Chat",
        "/ai_api.v1.AiApiServiceX/Chat",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<pb::ChatRequest, pb::ChatResponse>::default();
        let status = grpc
            .unary(
                authed(chat_request("gpt-4o-mini")),
                http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }
}

/// The gRPC door closes a connection that never sends the HTTP/2 preface (300 ms here), but a
/// channel that has is kept however long it idles between calls.
#[tokio::test]
async fn a_connection_without_a_preface_is_closed_but_an_idle_channel_is_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeOpenAi::start().await;
    let yaml = openai_config(&fake.base, &[("gpt-4o-mini", "gpt-4o-mini")], "");
    let gw = support::start_tuned_with(&yaml, |o| {
        o.http_deadlines = ai_api::http::deadline::Deadlines {
            head: Duration::from_millis(300),
            idle: Duration::from_millis(300),
            send: Duration::from_millis(300),
        };
    })
    .await;
    // A channel that counts the connections it opens.
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = gw.grpc_addr;
    let counting = opened.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(gw.grpc_url())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut client = AiApiServiceClient::new(channel);
    client
        .chat(authed(chat_request("gpt-4o-mini")))
        .await
        .unwrap();

    // Nothing at all, and half a preface.
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.grpc_addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(gw.grpc_addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for tcp in [&mut silent, &mut half] {
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection without a preface is still open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(200));

    // The channel idled for longer than every deadline and still calls on its connection.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client
        .chat(authed(chat_request("gpt-4o-mini")))
        .await
        .unwrap();
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
}
