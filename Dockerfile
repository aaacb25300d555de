# One image for the distributor, the workers and the sandbox gateway: `billq <command>`.
#   docker build -t billq .
#   docker run billq worker --metrics-port 9100      (the default command: worker)
#   docker run billq distribute                      (cron / CronJob)
#   docker run billq sandbox-gateway --host 0.0.0.0  (test gateway)
# Both stages use the same Python and Debian release, so the virtualenv built in the first
# runs unchanged in the second.

# --- build: full Debian image with compilers and headers; makes /opt/billq -------------
FROM python:3.11-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/billq
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY shared ./shared
COPY distributor ./distributor
COPY worker ./worker
RUN /opt/billq/bin/pip install --no-compile . \
    && /opt/billq/bin/python -m compileall -q /opt/billq/lib

# --- runtime: slim, no build tools, no source tree, non-root ---------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 billq \
    && useradd --system --uid 10001 --gid billq --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin billq
COPY --from=build /opt/billq /opt/billq
ENV PATH=/opt/billq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BILLQ_LOG_FORMAT=json \
    BILLQ_METRICS_PORT=9100
WORKDIR /app
USER 10001:10001
# 9100: worker /metrics, /healthz, /readyz. 12111: sandbox gateway.
EXPOSE 9100 12111
# The worker's liveness endpoint on BILLQ_METRICS_PORT. Any failure (refused, timeout,
# non-2xx) raises and exits 1 = unhealthy. Short-lived commands and the sandbox gateway
# override or disable it (docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('BILLQ_METRICS_PORT') or '9100'), timeout=3).close()"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["billq"]
CMD ["worker"]
