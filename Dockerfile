# Build: a pure-Rust protobuf compiler is used (protox), so no protoc is needed.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY config config
COPY data data
COPY migrations migrations
RUN cargo build --release --locked && strip target/release/ai-api

# Run: a small non-root image with CA certificates for the providers' TLS.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app ai-api \
    && mkdir -p /app/data && chown -R ai-api /app
COPY --from=build /src/target/release/ai-api /usr/local/bin/ai-api
COPY --from=build /src/config/demo.yaml /app/config.yml
WORKDIR /app
USER ai-api
ENV AI_API_DATA_DIR=/app/data \
    SERVER_ROOT_PATH=/ai-api
EXPOSE 10200 10201
ENTRYPOINT ["ai-api"]
CMD ["--config", "/app/config.yml"]
