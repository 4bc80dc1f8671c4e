//! Cost in USD of each request, from the built-in price table (`data/prices.json`, derived by
//! `scripts/derive_prices.py` from LiteLLM's MIT-licensed price table) or a deployment's own
//! `input_cost_per_token` / `output_cost_per_token`. An unknown price costs 0 and is warned
//! about once per model, never a failure.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use serde::Deserialize;

use super::types::{ImageRequest, Usage};
use crate::config::DeploymentConfig;

const PRICES_JSON: &str = include_str!("../../data/prices.json");

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Price {
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    pub cache_creation_input_token_cost: Option<f64>,
    pub output_cost_per_image: Option<f64>,
    pub input_cost_per_pixel: Option<f64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PriceFile {
    models: HashMap<String, Price>,
}

/// Per-token prices of one deployment, in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenPrice {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl TokenPrice {
    /// USD for `usage`.
    pub fn cost(&self, usage: &Usage) -> f64 {
        // OpenAI and Gemini count cached tokens inside prompt_tokens; Anthropic's translation
        // does the same, so the uncached part is the difference.
        let cached = u64::from(usage.cached_prompt_tokens.min(usage.prompt_tokens));
        let creation = u64::from(
            usage.cache_creation_tokens.min(
                usage
                    .prompt_tokens
                    .saturating_sub(usage.cached_prompt_tokens),
            ),
        );
        let plain = u64::from(usage.prompt_tokens) - cached - creation;
        plain as f64 * self.input
            + cached as f64 * self.cache_read
            + creation as f64 * self.cache_write
            + f64::from(usage.completion_tokens) * self.output
    }
}

/// The price table, and which models were already warned about.
#[derive(Debug)]
pub struct PriceTable {
    models: HashMap<String, Price>,
    warned: Mutex<HashSet<String>>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The table built into the binary.
    pub fn builtin() -> Self {
        let models = match serde_json::from_str::<PriceFile>(PRICES_JSON) {
            Ok(f) => f.models,
            Err(e) => {
                tracing::error!("the built-in price table does not parse ({e}); all costs are 0");
                HashMap::new()
            }
        };
        PriceTable {
            models,
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The table's row for a deployment: `provider/model`, else the bare model name.
    pub fn lookup(&self, d: &DeploymentConfig) -> Option<&Price> {
        let qualified = format!("{}/{}", d.provider.name(), d.upstream_model);
        self.models
            .get(&qualified)
            .or_else(|| self.models.get(&d.upstream_model))
    }

    fn warn_once(&self, d: &DeploymentConfig) {
        let mut warned = self.warned.lock();
        if warned.insert(d.id.clone()) {
            tracing::warn!(
                deployment = %d.id,
                model = %d.upstream_model,
                "no price known for this model; its requests are counted at cost 0 (set input_cost_per_token / output_cost_per_token to fix)"
            );
        }
    }

    /// A deployment's token prices, resolved once (overrides first, then the table). `None`
    /// for a mock deployment (free) or an unknown model (warned about once, here).
    pub fn token_price(&self, d: &DeploymentConfig) -> Option<TokenPrice> {
        if d.mock_response.is_some() {
            return None;
        }
        let row = self.lookup(d);
        let input = d
            .input_cost_per_token
            .or(row.and_then(|r| r.input_cost_per_token));
        let Some(input) = input else {
            self.warn_once(d);
            return None;
        };
        Some(TokenPrice {
            input,
            output: d
                .output_cost_per_token
                .or(row.and_then(|r| r.output_cost_per_token))
                .unwrap_or(0.0),
            cache_read: row
                .and_then(|r| r.cache_read_input_token_cost)
                .unwrap_or(input),
            cache_write: row
                .and_then(|r| r.cache_creation_input_token_cost)
                .unwrap_or(input),
        })
    }

    /// USD for the tokens of a call on `d`, resolving its price each time (tests; the request
    /// path keeps a [`TokenPrice`] per deployment instead).
    #[cfg(test)]
    pub fn token_cost(&self, d: &DeploymentConfig, usage: &Usage) -> f64 {
        self.token_price(d).map_or(0.0, |p| p.cost(usage))
    }

    /// USD for generated images: per image, else per pixel, by `quality/size/model` rows.
    pub fn image_cost(&self, d: &DeploymentConfig, req: &ImageRequest, images: usize) -> f64 {
        if d.mock_response.is_some() {
            return 0.0;
        }
        let size = req.size.as_deref().unwrap_or("1024x1024");
        let quality = req.quality.as_deref().unwrap_or("standard");
        let size_key = size.replace('x', "-x-");
        let keys = [
            format!("{quality}/{size_key}/{}", d.upstream_model),
            format!("{size_key}/{}", d.upstream_model),
            d.upstream_model.clone(),
        ];
        let row = keys.iter().find_map(|k| self.models.get(k));
        let pixels = size
            .split_once('x')
            .and_then(|(w, h)| Some(w.parse::<f64>().ok()? * h.parse::<f64>().ok()?))
            .unwrap_or(1024.0 * 1024.0);
        let per_image = row.and_then(|r| {
            r.output_cost_per_image
                .or(r.input_cost_per_pixel.map(|p| p * pixels))
        });
        match per_image {
            Some(p) => p * images as f64,
            None => {
                self.warn_once(d);
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn deployment(model: &str) -> DeploymentConfig {
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: {model}\n      api_key: k\n"
        );
        load_str(&yaml, "t", &|_| None).unwrap().config.deployments[0].clone()
    }

    #[test]
    fn chat_cost_uses_the_table_and_cached_tokens() {
        let t = PriceTable::builtin();
        let d = deployment("openai/gpt-4o-mini");
        let usage = Usage {
            cached_prompt_tokens: 400,
            ..Usage::new(1000, 100)
        };
        let cost = t.token_cost(&d, &usage);
        let expected = 600.0 * 1.5e-7 + 400.0 * 7.5e-8 + 100.0 * 6e-7;
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
        let g = deployment("gemini/gemini-2.0-flash");
        assert!(t.token_cost(&g, &Usage::new(10, 10)) > 0.0);
    }

    #[test]
    fn unknown_models_cost_nothing() {
        let t = PriceTable::builtin();
        assert_eq!(
            t.token_cost(&deployment("openai/no-such-model"), &Usage::new(5, 5)),
            0.0
        );
    }

    #[test]
    fn dall_e_3_is_priced_per_pixel() {
        let t = PriceTable::builtin();
        let d = deployment("openai/dall-e-3");
        let req = ImageRequest {
            model: "m".into(),
            prompt: "p".into(),
            n: None,
            size: Some("1024x1024".into()),
            quality: None,
            style: None,
            response_format: None,
            user: None,
            extra: Default::default(),
        };
        let cost = t.image_cost(&d, &req, 1);
        assert!((cost - 0.04).abs() < 0.001, "{cost}");
    }
}
