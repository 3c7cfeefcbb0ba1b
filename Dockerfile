# syntax=docker/dockerfile:1
# Build: the locked environment, no compilers in the final image.
FROM python:3.11-slim-bookworm AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
COPY clients ./clients
RUN uv sync --locked --no-dev --no-editable --python /usr/local/bin/python3

# Run: non-root, data under /var/lib/certbroker, health through the gRPC health service.
# The management port listens on all interfaces, so the broker refuses to start until it
# is given TLS (CERTBROKER_TLS_CERT, _KEY, _CLIENT_CA: mount the files) or the explicit
# plaintext opt-out CERTBROKER_ALLOW_PLAINTEXT=1; the refusal says which. The health
# check needs neither: it asks the plaintext, health-only listener on the container's
# loopback (CERTBROKER_HEALTH_LISTEN, default 127.0.0.1:50052).
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home /var/lib/certbroker certbroker \
    && mkdir -p /var/lib/certbroker && chown certbroker /var/lib/certbroker
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    CERTBROKER_LISTEN=0.0.0.0:50051 \
    CERTBROKER_HTTP01_LISTEN=0.0.0.0:8402 \
    CERTBROKER_DB=/var/lib/certbroker/certbroker.sqlite3 \
    CERTBROKER_KEK_FILE=/var/lib/certbroker/certbroker.kek
USER certbroker
VOLUME /var/lib/certbroker
EXPOSE 50051 8402
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD ["python", "-m", "certbroker.healthcheck"]
ENTRYPOINT ["certbroker", "serve"]
