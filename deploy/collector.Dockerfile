# The estate collector as a container image, built from the repository root:
#   docker build -f deploy/collector.Dockerfile -t estate-collector .
# deploy/compose.yaml builds it this way. The binary needs no system library (rustls, SQLite
# bundled), so the runtime image is a plain Debian slim with an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p estate-collector

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/estate-collector --shell /usr/sbin/nologin estate \
    && install -d -o estate -g estate -m 0750 /var/lib/estate-collector \
    && install -d -o estate -g estate -m 0755 /etc/estate/tls
COPY --from=build /src/target/release/estate-collector /usr/local/bin/estate-collector
USER estate
WORKDIR /var/lib/estate-collector
VOLUME /var/lib/estate-collector
# 9750: gRPC from agents; 9751: /metrics, /healthz, the API and the UI.
EXPOSE 9750 9751
ENTRYPOINT ["/usr/local/bin/estate-collector"]
# TLS files from `estate-collector tls init --dir /etc/estate/tls ...` (a volume there).
CMD ["--grpc-listen=0.0.0.0:9750", "--http-listen=0.0.0.0:9751", "--database=/var/lib/estate-collector/estate.db", "--tls-cert-file=/etc/estate/tls/server.pem", "--tls-key-file=/etc/estate/tls/server.key"]
