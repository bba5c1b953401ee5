# writ: build with `docker build -t writ .`; docker-compose.yml runs the whole
# stack (Redis, MongoDB replica set, writ, Prometheus, Grafana).

FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (see also .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin writ
COPY --from=builder /src/target/release/writ /usr/local/bin/writ
# The documented default config. Its metrics listener is 127.0.0.1, unreachable
# from outside the container: docker-compose.yml mounts docker/writ.toml over it.
COPY config/writ.toml /etc/writ/writ.toml
USER writ
EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["writ"]
CMD ["--config", "/etc/writ/writ.toml", "serve"]
