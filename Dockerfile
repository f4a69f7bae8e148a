# syntax=docker/dockerfile:1
# Tollgate gateway image: `docker build -t tollgate:dev .` from the repository root.
# Build stage: the whole workspace is needed to resolve it, only the `tollgate` binary is built.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts (BuildKit) keep the registry and target/ between builds; the binary is copied out
# of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tollgate \
    && install -D -m 0755 target/release/tollgate /out/tollgate

# Runtime stage: glibc + libgcc + CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# `nonroot` (65532:65532) of the distroless image, numeric so that Kubernetes' runAsNonRoot can
# verify it without a passwd lookup.
USER 65532:65532
# 8402: public listener; 8403: admin API (both need `0.0.0.0:...` in the config inside a container).
EXPOSE 8402 8403
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "--config", "/etc/tollgate/tollgate.toml"]
