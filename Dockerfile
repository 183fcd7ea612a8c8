# cachegrid image: a multi-stage release build, then a small Debian runtime with the node binary
# and the example session app, running as a non-root user with its files in the /data volume.
#
#   docker build -t cachegrid .
#   docker run -p 7379:7379 -p 8379:8379 cachegrid                 # a node
#   docker run -p 3000:3000 --entrypoint login_app cachegrid --listen 0.0.0.0:3000 --insecure
#
# Configure nodes with CACHEGRID_* environment variables (docs/CONFIGURATION.md) rather than
# flags: the HEALTHCHECK's `cachegrid health` reads the same variables to find the admin port.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY middleware ./middleware
RUN cargo build --release --locked --bin cachegrid \
    && cargo build --release --locked -p cachegrid-middleware --example login_app \
    && strip target/release/cachegrid target/release/examples/login_app

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin cachegrid \
    && mkdir -p /data && chown cachegrid:cachegrid /data
COPY --from=build /src/target/release/cachegrid /usr/local/bin/cachegrid
COPY --from=build /src/target/release/examples/login_app /usr/local/bin/login_app
USER cachegrid
WORKDIR /data
VOLUME ["/data"]
ENV CACHEGRID_BIND=0.0.0.0 \
    CACHEGRID_DIR=/data \
    CACHEGRID_LOG_FORMAT=json
# 7379: clients (Redis protocol); 8379: admin HTTP (metrics, health, dashboard);
# 17379: the cluster bus (Raft, slot moves, replication), between nodes only.
EXPOSE 7379 8379 17379
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["cachegrid", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachegrid"]
CMD ["node"]
