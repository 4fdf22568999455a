# Build: a static binary, the same command CI runs.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/anaplan-proxy ./cmd/anaplan-proxy \
 && mkdir -p /out/state && chmod 0700 /out/state

# Run: no shell, no package manager, a non-root user (uid 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/anaplan-proxy /usr/local/bin/anaplan-proxy
COPY --from=build --chown=65532:65532 /out/state /var/lib/anaplan-proxy
USER 65532:65532
ENV ANAPLAN_PROXY_STATE_DIR=/var/lib/anaplan-proxy
VOLUME ["/var/lib/anaplan-proxy"]
# 3128: the proxy; 9464: /metrics, /healthz, /readyz, /status.
EXPOSE 3128 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["/usr/local/bin/anaplan-proxy", "status", "--quiet"]
ENTRYPOINT ["/usr/local/bin/anaplan-proxy"]
CMD ["serve"]
