# syntax=docker/dockerfile:1
#
# stsgate container image: build with the Rust toolchain, run on distroless
# (glibc + libgcc, no shell, no package manager) as an unprivileged user.
#
#   docker build -t registry.example.com/stsgate:0.1.0 .
#
# The build needs nothing that cargo does not fetch: build.rs compiles proto/
# with protox (pure Rust, no protoc) and aws-lc-sys builds its C code with the
# image's gcc (no cmake, no Go, no Perl). Nothing extra is needed at runtime:
# the binary links glibc and libgcc_s dynamically, aws-lc is linked in
# statically, and TLS roots are compiled in (webpki-roots).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The cache mounts keep the registry and target dir between builds (BuildKit);
# target/ is a cache, so the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stsgate \
    && install -m 0755 target/release/stsgate /usr/local/bin/stsgate

FROM ${RUNTIME_IMAGE}
COPY --from=build /usr/local/bin/stsgate /usr/local/bin/stsgate
# distroless "nonroot" (uid/gid 65532). Numeric, so Kubernetes can verify
# runAsNonRoot without resolving a user name.
USER 65532:65532
# 9191: gRPC (ext_authz, grpc.health.v1, reflection); 8080: HTTP (token
# endpoint, JWKS, metadata, /healthz, /readyz, /metrics).
EXPOSE 9191 8080
ENTRYPOINT ["/usr/local/bin/stsgate"]
CMD ["serve", "--config", "/etc/stsgate/config.yaml"]
