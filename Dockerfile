# syntax=docker/dockerfile:1
# Multi-stage build of the single `awooop` binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin awooop

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin awooop
COPY --from=build /src/target/release/awooop /usr/local/bin/awooop
USER 65532:65532
ENV AWOOOP_STATE_DIR=/tmp/awooop AWOOOP_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/awooop"]
CMD ["--help"]
