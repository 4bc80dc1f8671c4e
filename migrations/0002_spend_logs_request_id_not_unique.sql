-- A request id names a request, it is not a key: clients send their own `x-request-id`, and a
-- client that sends the same one twice has been served twice and pays twice. 0001 made it the
-- ledger's primary key, so a repeated id was logged and counted once. Exactly-once writing is
-- the batch id's job (`spend_batches`). The table is rebuilt (SQLite cannot drop a primary
-- key); its rows are kept. The new index on request_id serves lookups by id; ids the gateway
-- makes are UUIDv7, so they arrive in order and the index grows at its end.
CREATE TABLE spend_logs_v2 (
    request_id        TEXT NOT NULL,
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
INSERT INTO spend_logs_v2 (request_id, request_time, key_hash, key_alias, model_group,
    deployment_id, provider_model, prompt_tokens, completion_tokens, cost_nanos, latency_ms,
    status, error_kind, request_body, response_body)
SELECT request_id, request_time, key_hash, key_alias, model_group, deployment_id,
    provider_model, prompt_tokens, completion_tokens, cost_nanos, latency_ms, status,
    error_kind, request_body, response_body
FROM spend_logs;
DROP TABLE spend_logs;
ALTER TABLE spend_logs_v2 RENAME TO spend_logs;
CREATE INDEX spend_logs_time ON spend_logs (request_time);
CREATE INDEX spend_logs_key_time ON spend_logs (key_hash, request_time);
CREATE INDEX spend_logs_request_id ON spend_logs (request_id);
