# Multi-stage build of the one `mailfleet` binary (worker, api, mock-provider, CLI).
#   docker build -t mailfleet .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it benches \
 && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs && echo '' > tests/it/main.rs \
 && cargo build --release --locked --bin mailfleet \
 && rm -rf src tests
COPY src src
COPY lua lua
COPY migrations migrations
COPY tests tests
COPY mailfleet.example.toml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin mailfleet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home mailfleet
COPY --from=build /src/target/release/mailfleet /usr/local/bin/mailfleet
USER 10001
# 9464: a worker's /metrics, /healthz, /livez, /readyz. 8080: the API. 8025: the mock provider.
EXPOSE 9464 8080 8025
ENTRYPOINT ["mailfleet"]
CMD ["worker"]
