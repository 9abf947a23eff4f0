# The three binaries of zael (zael-server, zae-limiter, zael-aggregator) in one image.
#   docker build -t zael:local .
# Used by docker-compose.yml; on AWS the aggregator runs as a Lambda instead (zae-limiter deploy).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p zael-server -p zael-deployer -p zael-aggregator \
 && mkdir /out \
 && cp target/release/zael-server target/release/zae-limiter target/release/zael-aggregator /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# envoyproxy/ratelimit's command: Envoy Gateway and the reference's manifests run /bin/ratelimit.
RUN ln -s /usr/local/bin/zael-server /bin/ratelimit
# The aggregator's --poll checkpoint (a volume in docker-compose.yml), writable by the user below.
RUN mkdir -p /var/lib/zael && chown 65534:65534 /var/lib/zael
COPY examples /zael/examples
USER 65534:65534
EXPOSE 8080 8081
ENTRYPOINT []
CMD ["zael-server", "--config", "/zael/examples/config"]
