# regmirror: pull-through caching mirror for container registries.
#   docker build -t regmirror .
#   docker run -d -p 5000:5000 -v regmirror-data:/data regmirror

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that source changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/{b=1; next} b && /^name/{gsub(/"/, "", $3); print $3; b=0}' Cargo.toml); do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY mirror.toml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin regmirror
# The documented default config, with the cache on the /data volume.
RUN sed 's|^path = "./data"|path = "/data"|' mirror.toml > /tmp/mirror.toml

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin regmirror \
    && mkdir -p /data /etc/regmirror \
    && chown regmirror:regmirror /data
COPY --from=build /src/target/release/regmirror /usr/local/bin/regmirror
COPY --from=build /tmp/mirror.toml /etc/regmirror/mirror.toml
USER regmirror
VOLUME ["/data"]
EXPOSE 5000
# /healthz over plain HTTP with bash alone (no curl in the image). With TLS configured, point
# it at /readyz through a sidecar or drop it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["regmirror"]
CMD ["serve", "--config", "/etc/regmirror/mirror.toml"]
