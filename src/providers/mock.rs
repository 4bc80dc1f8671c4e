//! `mock_response` deployments (LiteLLM's testing feature): answer with the configured text
//! without any network call; streams send it word by word. Embeddings are deterministic vectors
//! of the input text, images a tiny PNG, so a demo config exercises every operation offline.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::{ChunkStream, ProviderApi};
use crate::config::DeploymentConfig;
use crate::core::error::Error;
use crate::core::types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, EmbeddingInput,
    EmbeddingRequest, EmbeddingResponse, FinishReason, GeneratedImage, ImageRequest, ImageResponse,
    Message, Role, Usage, unix_now,
};

/// A 1×1 transparent PNG.
const PIXEL_PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

#[derive(Debug)]
pub struct MockProvider {
    model: String,
    text: String,
}

impl MockProvider {
    pub fn new(d: &DeploymentConfig, text: String) -> Self {
        MockProvider {
            model: d.upstream_model.clone(),
            text,
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        MockProvider {
            model: "m".into(),
            text: "ok".into(),
        }
    }

    fn usage(&self, req: &ChatRequest) -> Usage {
        Usage::new(prompt_tokens(req), approx_tokens(&self.text))
    }
}

/// A rough token count (words), enough for a mock.
fn approx_tokens(text: &str) -> u32 {
    text.split_whitespace().count().max(1) as u32
}

fn prompt_tokens(req: &ChatRequest) -> u32 {
    req.messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, |c| approx_tokens(&c.text())))
        .sum()
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

impl ProviderApi for MockProvider {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, Error> {
        let n = req.n.unwrap_or(1);
        Ok(ChatResponse {
            id: completion_id(),
            model: self.model.clone(),
            created: unix_now(),
            choices: (0..n)
                .map(|index| Choice {
                    index,
                    message: Message::text(Role::Assistant, self.text.clone()),
                    finish_reason: FinishReason::Stop,
                    logprobs: None,
                })
                .collect(),
            usage: Some(self.usage(req)),
            system_fingerprint: None,
        })
    }

    async fn chat_stream(&self, req: &ChatRequest) -> Result<ChunkStream, Error> {
        let id = completion_id();
        let created = unix_now();
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
            id: id.clone(),
            model: self.model.clone(),
            created,
            choices,
            usage,
            system_fingerprint: None,
        };
        let delta = |role: Option<Role>, content: Option<String>, finish: Option<FinishReason>| {
            vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role,
                    content,
                    ..Delta::default()
                },
                finish_reason: finish,
                logprobs: None,
            }]
        };
        let mut chunks = vec![chunk(
            delta(Some(Role::Assistant), Some(String::new()), None),
            None,
        )];
        for word in self.text.split_inclusive(' ') {
            chunks.push(chunk(delta(None, Some(word.to_string()), None), None));
        }
        chunks.push(chunk(delta(None, None, Some(FinishReason::Stop)), None));
        chunks.push(chunk(Vec::new(), Some(self.usage(req))));
        Ok(Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(Ok),
        )))
    }

    async fn embed(&self, req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        let dims = req.dimensions.unwrap_or(8) as usize;
        let texts: Vec<String> = match &req.input {
            EmbeddingInput::Texts(t) => t.clone(),
            EmbeddingInput::Tokens(t) => t.iter().map(|v| format!("{v:?}")).collect(),
        };
        let data = texts
            .iter()
            .map(|t| {
                (0..dims)
                    .map(|i| {
                        let mut h = DefaultHasher::new();
                        (t, i).hash(&mut h);
                        (h.finish() % 2000) as f32 / 1000.0 - 1.0
                    })
                    .collect()
            })
            .collect();
        let tokens = texts.iter().map(|t| approx_tokens(t)).sum();
        Ok(EmbeddingResponse {
            model: self.model.clone(),
            data,
            usage: Usage::new(tokens, 0),
        })
    }

    async fn generate_image(&self, req: &ImageRequest) -> Result<ImageResponse, Error> {
        let b64 = req.response_format.as_deref() == Some("b64_json");
        let image = GeneratedImage {
            url: (!b64).then(|| format!("data:image/png;base64,{PIXEL_PNG_B64}")),
            b64_json: b64.then(|| PIXEL_PNG_B64.to_string()),
            revised_prompt: Some(self.text.clone()),
        };
        Ok(ImageResponse {
            created: unix_now(),
            data: vec![image; req.n.unwrap_or(1) as usize],
            usage: Usage::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Content;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_mock_stream_reassembles_to_the_mock_text() {
        let p = MockProvider {
            model: "m".into(),
            text: "one two three".into(),
        };
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hi")],
            ..ChatRequest::default()
        };
        let chunks: Vec<_> = p.chat_stream(&req).await.unwrap().collect().await;
        let text: String = chunks
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .flat_map(|c| c.choices.iter())
            .filter_map(|ch| ch.delta.content.clone())
            .collect();
        assert_eq!(text, "one two three");
        let last = chunks.last().unwrap().as_ref().unwrap();
        assert_eq!(last.usage.unwrap().completion_tokens, 3);
        let full = p.chat(&req).await.unwrap();
        assert_eq!(
            full.choices[0].message.content,
            Some(Content::Text("one two three".into()))
        );
    }
}
