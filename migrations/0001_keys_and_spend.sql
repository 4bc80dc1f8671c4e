-- ai-api storage schema (src/store). One schema for both backends: every type name below is
-- valid PostgreSQL and maps to the intended SQLite affinity (BIGINT -> INTEGER,
-- DOUBLE PRECISION -> REAL, BOOLEAN -> NUMERIC, TEXT -> TEXT).
-- Times are Unix epoch milliseconds (UTC). Money is integer nano-USD (USD x 1e9), so sums are
-- exact and independent of the order rows are added in.

-- Per-service API keys (LiteLLM's key fields). Only the SHA-256 hex of a key is stored.
CREATE TABLE IF NOT EXISTS api_keys (
    token_hash            TEXT PRIMARY KEY,            -- sha256(plain key), lowercase hex
    key_name              TEXT NOT NULL,               -- display form, "sk-...abcd"
    key_alias             TEXT,                        -- unique when set
    models                TEXT NOT NULL,               -- JSON array of model groups; [] = all
    max_budget            DOUBLE PRECISION,            -- USD
    budget_duration       TEXT,                        -- "30s", "1h", "1d", "7d", "30d", "1mo", ...
    budget_reset_at       BIGINT,                      -- end of the current budget window
    rpm_limit             BIGINT,
    tpm_limit             BIGINT,
    max_parallel_requests BIGINT,
    expires               BIGINT,
    metadata              TEXT NOT NULL,               -- JSON object
    blocked               BOOLEAN NOT NULL DEFAULT FALSE,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_key_alias ON api_keys (key_alias) WHERE key_alias IS NOT NULL;

-- Spend ledger: one append-only row per request, keyed by request id.
CREATE TABLE IF NOT EXISTS spend_logs (
    request_id        TEXT PRIMARY KEY,
    request_time      BIGINT NOT NULL,
    key_hash          TEXT,                            -- NULL for the master key
    key_alias         TEXT,
    model_group       TEXT NOT NULL,
    deployment_id     TEXT NOT NULL,
    provider_model    TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_nanos        BIGINT NOT NULL,
    latency_ms        BIGINT NOT NULL,
    status            BIGINT NOT NULL,                 -- HTTP status
    error_kind        TEXT,
    request_body      TEXT,
    response_body     TEXT
);
CREATE INDEX IF NOT EXISTS spend_logs_time ON spend_logs (request_time);
CREATE INDEX IF NOT EXISTS spend_logs_key_time ON spend_logs (key_hash, request_time);

-- Pre-aggregated totals per (key, model group, UTC minute), upserted once per batch.
CREATE TABLE IF NOT EXISTS spend_totals (
    key_hash          TEXT NOT NULL,                   -- '' for the master key
    model_group       TEXT NOT NULL,
    bucket            BIGINT NOT NULL,                 -- Unix minute: floor(epoch seconds / 60)
    cost_nanos        BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    requests          BIGINT NOT NULL,
    PRIMARY KEY (key_hash, bucket, model_group)          -- budget checks: one key, a time range
);
CREATE INDEX IF NOT EXISTS spend_totals_bucket ON spend_totals (bucket);

-- Batches already written: a retried batch (same id) is skipped, so totals count it once.
CREATE TABLE IF NOT EXISTS spend_batches (
    batch_id   TEXT PRIMARY KEY,
    written_at BIGINT NOT NULL,
    records    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_batches_written_at ON spend_batches (written_at);
