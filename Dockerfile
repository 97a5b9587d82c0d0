# Herald container image: one static-ish binary (glibc + libgcc only) on debian:bookworm-slim.
#
#   docker build -t herald .
#   docker run --rm -p 8080:8080 herald              # standalone, in-memory, prints a master key
#   docker run --rm herald consume | serve | migrate  # the production roles (see docs/operations.md)
#
# No BuildKit-only syntax (RUN --mount): docker-compose v1 and the classic builder build it too.
ARG RUST_VERSION=1

# --- planner: the workspace reduced to its manifests, lockfile and empty targets. Its output only
# changes when a Cargo.toml or Cargo.lock changes, so the dependency layer below stays cached
# across source edits (the cargo-chef idea without installing cargo-chef).
FROM rust:${RUST_VERSION}-bookworm AS planner
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock -delete \
 && find . -type d -empty -delete \
 && for manifest in $(find . -name Cargo.toml); do \
        dir=$(dirname "$manifest"); mkdir -p "$dir/src"; : > "$dir/src/lib.rs"; \
    done \
 && printf 'fn main() {}\n' > src/main.rs

# --- builder: dependencies first (cached layer), then Herald itself.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY --from=planner /src ./
RUN cargo build --release --locked --bin herald
COPY . .
# The real sources may carry older mtimes than the stubs just built; touch them so cargo rebuilds
# Herald's own crates instead of linking the empty stubs.
RUN find src crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin herald \
 && cp target/release/herald /herald

# --- runtime: the binary and CA certificates, nothing else. The migrations are compiled into the
# binary (include_str!), so `herald migrate` needs no files. bash/coreutils from the base image are
# used by the compose health checks (/dev/tcp) and the Kubernetes preStop `sleep`.
FROM debian:bookworm-slim AS runtime
# OCI image annotations (https://github.com/opencontainers/image-spec, annotations.md); pass
# --build-arg VERSION=… REVISION=$(git rev-parse HEAD) CREATED=$(date -u +%FT%TZ) when building a
# release.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Real-time notifications for an LLM API gateway: RabbitMQ events, budget alerts, SignalR over WebSocket" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.vendor="The Herald authors" \
      org.opencontainers.image.documentation="README.md and docs/ in the source repository"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin herald
COPY --from=builder /herald /usr/local/bin/herald
# Numeric user so Kubernetes `runAsNonRoot` can verify it without /etc/passwd.
USER 10001:10001
ENV HERALD_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Healthy while /readyz answers 200 (every configured dependency reachable; docs/operations.md).
# The image has no curl: bash's /dev/tcp speaks the HTTP request, to the port of
# HERALD_ADMIN_LISTEN when it is set (then /readyz is served only there), else of HERALD_LISTEN.
# Kubernetes ignores HEALTHCHECK and uses the chart's probes; compose sets its own check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "a=${HERALD_ADMIN_LISTEN:-$HERALD_LISTEN} && exec 3<>/dev/tcp/127.0.0.1/${a##*:} && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["herald"]
CMD ["standalone"]
