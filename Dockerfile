# syntax=docker/dockerfile:1
# One image for the controller, the prepare Job and the load workers:
#
#   docker build -t ghcr.io/stampede-dev/stampede:0.1.0 .
#   docker run --rm ghcr.io/stampede-dev/stampede:0.1.0 --help
#
# The proto files are compiled by build.rs with protox: no protoc is needed.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
# The caches keep the crates.io index and the dependencies between builds; the binary is copied
# out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stampede \
 && install -D -m 0755 target/release/stampede /out/stampede

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="stampede" \
      org.opencontainers.image.description="Kubernetes operator and CLI for capacity and stress tests of Milvus vector databases" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/stampede /usr/local/bin/stampede
# The distroless nonroot user, by number so runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8080 7070
ENTRYPOINT ["stampede"]
CMD ["--help"]
