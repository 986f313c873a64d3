# syntax=docker/dockerfile:1
# Multi-stage build of the single `awooop` binary (operator, API/gateway and workers all run it).
#   docker build -t awooop:dev .
# Build stage: the exact Cargo.lock (--locked); BuildKit caches the registry and target folder
# between builds. Only what the build reads is copied: the manifests, the workspace crates
# under operator/ (operator/store's build.rs re-embeds migrations/ through sqlx::migrate!,
# contract schemas live under operator/schemas), and tests/ because operator/Cargo.toml names
# the integration-test target by path and cargo checks that it exists. The release binary is
# built without the `bench` feature: no benchmarks, no `mcp-fixture`, no test doubles.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
COPY migrations ./migrations
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin awooop \
 && install -D -m 0755 target/release/awooop /out/awooop

# Runtime: distroless glibc image (the binary links only libc, libm and libgcc_s; TLS is
# rustls), no shell, no package manager; runs as the image's non-root user 65532, which the
# chart's securityContext also enforces (runAsNonRoot, read-only root filesystem).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/awooop /usr/local/bin/awooop
USER 65532:65532
# State (private PostgreSQL is never used in a container: DATABASE_URL is required there) goes
# to /tmp, an emptyDir in the chart.
ENV AWOOOP_STATE_DIR=/tmp/awooop AWOOOP_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/awooop"]
CMD ["--help"]
