# One image, every Filament binary; each Deployment picks its command
# (k8s/). Build: docker build -t filament:<version> .
#
# Stage 1 builds the release binaries with the workspace's lockfile. The
# full Rust image brings gcc and make, which bundled SQLite and jemalloc
# need; protobuf is compiled in-process (protox), so no protoc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        --bin filament-api --bin filament-gateway --bin filament-presence \
        --bin filament-voice --bin filament-search --bin filament \
    && mkdir /out \
    && cp target/release/filament-api target/release/filament-gateway \
          target/release/filament-presence target/release/filament-voice \
          target/release/filament-search target/release/filament /out/

# Stage 2: glibc and libgcc only (no shell, no package manager), as the
# distroless image's non-root user (65532, the UID k8s/hardening.yaml runs
# as). The binaries need no other library: SQLite is bundled and no TLS
# library is linked.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# Public HTTP (api 3000, gateway 8081), gRPC (50051-50054), admin (9090).
EXPOSE 3000 8081 50051 50052 50053 50054 9090
ENTRYPOINT []
CMD ["filament"]
