#!/usr/bin/env python3
"""Derives ai-api's built-in price table (data/prices.json) from LiteLLM's MIT-licensed model
price table (shared/data/model_prices.json): only the providers ai-api serves, only the modes it
serves (chat, embedding, image generation), only the price fields it reads.

Usage: python3 scripts/derive_prices.py ../shared/data/model_prices.json > data/prices.json
"""
import json
import sys

PROVIDERS = {
    "openai", "text-completion-openai", "anthropic", "gemini", "azure", "groq", "mistral",
    "deepseek", "openrouter", "xai", "together_ai", "fireworks_ai", "ollama", "hosted_vllm",
    "lm_studio",
}
MODES = {"chat", "completion", "embedding", "image_generation", "responses"}
FIELDS = [
    "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
    "cache_creation_input_token_cost", "output_cost_per_image", "input_cost_per_pixel",
    "max_input_tokens", "max_output_tokens",
]

def main():
    src = json.load(open(sys.argv[1]))
    out = {}
    for key, v in sorted(src.items()):
        if not isinstance(v, dict) or key == "sample_spec":
            continue
        if v.get("litellm_provider") not in PROVIDERS or v.get("mode") not in MODES:
            continue
        row = {f: v[f] for f in FIELDS if isinstance(v.get(f), (int, float))}
        for f in ("max_input_tokens", "max_output_tokens"):
            if f in row:
                row[f] = int(row[f])
        if any(f.endswith(("_token", "_image", "_pixel", "_cost")) for f in row):
            row["mode"] = v["mode"]
            out[key] = row
    json.dump({"source": "LiteLLM model_prices_and_context_window.json (MIT), via shared/data/model_prices.json",
               "models": out}, sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")

main()
