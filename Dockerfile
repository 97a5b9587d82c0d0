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
ENTRYPOINT ["herald"]
CMD ["standalone"]
