//! Gemini provider (stub: being written).

use super::http::Upstream;
use super::{ChunkStream, ProviderApi};
use crate::core::error::{Error, ErrorKind};
use crate::core::types::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ImageRequest, ImageResponse,
};

#[derive(Debug)]
pub struct GeminiProvider {
    upstream: Upstream,
}

impl GeminiProvider {
    pub fn new(upstream: Upstream) -> Self {
        GeminiProvider { upstream }
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::BadRequest,
            format!("{what} is not supported by provider {}", self.upstream.deployment.provider.name()),
        )
    }
}

impl ProviderApi for GeminiProvider {
    async fn chat(&self, _req: &ChatRequest) -> Result<ChatResponse, Error> {
        Err(self.unsupported("chat"))
    }
    async fn chat_stream(&self, _req: &ChatRequest) -> Result<ChunkStream, Error> {
        Err(self.unsupported("chat"))
    }
    async fn embed(&self, _req: &EmbeddingRequest) -> Result<EmbeddingResponse, Error> {
        Err(self.unsupported("embeddings"))
    }
    async fn generate_image(&self, _req: &ImageRequest) -> Result<ImageResponse, Error> {
        Err(self.unsupported("image generation"))
    }
}
