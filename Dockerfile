# syntax=docker/dockerfile:1
# One small image with both binaries: `stocknet` (the services; the entrypoint), built without
# the load client and its benchmarking dependencies, and `stocknet-operator`.
# Build: docker build -t stocknet:0.1.0 .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds on the same machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stocknet --no-default-features \
 && cargo build --release --locked -p stocknet-operator \
 && mkdir -p /out \
 && cp target/release/stocknet target/release/stocknet-operator /out/

# distroless/cc: glibc and libgcc only, no shell; runs as the non-root user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/stocknet /out/stocknet-operator /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8081 8091
ENTRYPOINT ["/usr/local/bin/stocknet"]
