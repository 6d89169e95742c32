# costproxy container image: slim Python 3.11, non-root, tokenizer files baked in, health check.
#
#   docker build -t costproxy .
#   docker run -p 8080:8080 -v costproxy-data:/data -e OPENAI_API_KEY -e COSTPROXY_ADMIN_TOKEN costproxy
#   docker run --rm -v costproxy-data:/data costproxy keys create --user alice --team ml
#
# The image's config is the repository's config/ and rules/ (in /app, found through
# COSTPROXY_CONFIG; they equal the defaults packaged in costproxy/defaults/), plus one line appended
# at build time: `encodings_dir: /opt/costproxy/encodings` (unless config/costproxy.yaml already
# sets it). Mount your own directory on /app/config to replace it (`costproxy init DIR` writes an
# editable copy). Provider keys and the admin token come from the environment (the names
# config/costproxy.yaml lists), never from the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project and its dependencies into a virtualenv ----------------------------
FROM ${PYTHON_IMAGE} AS build
# Optional extras, e.g. --build-arg EXTRAS='[postgres]' for store.ledger_url (deploy/docker-compose.yml).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml names README.md as the package readme: the build needs it.
COPY pyproject.toml README.md ./
COPY costproxy ./costproxy
# pip compiles the .pyc files here, so the read-only runtime never needs to write them.
RUN pip install ".${EXTRAS}" \
 && costproxy export-encodings /opt/costproxy/encodings

# --- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COSTPROXY_CONFIG=/app/config/costproxy.yaml \
    COSTPROXY_HOST=0.0.0.0 \
    COSTPROXY_PORT=8080 \
    COSTPROXY_STORE_URL=sqlite:////data/costproxy.sqlite3

RUN groupadd --system --gid 10001 costproxy \
 && useradd --system --uid 10001 --gid costproxy --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin costproxy

COPY --from=build /opt/venv /opt/venv
# The verified *.tiktoken files (sha256 checked on export and again on every load).
COPY --from=build /opt/costproxy/encodings /opt/costproxy/encodings

WORKDIR /app
COPY config ./config
COPY rules ./rules
# Point the image's config at the baked encodings, then run every check `serve` runs (config,
# models, quality profiles, rules, encodings) now rather than at the first start. No provider key
# exists at build time, so its provider table says so; that is a warning, not a failure.
# /app stays root-owned and read-only for the service user.
RUN if ! grep -q '^encodings_dir:' config/costproxy.yaml; then \
        printf '\n# Added by the Dockerfile: tokenizer files baked into the image.\nencodings_dir: /opt/costproxy/encodings\n' \
            >> config/costproxy.yaml; \
    fi \
 && costproxy check-config \
 && mkdir -p /data /app/data \
 && chown costproxy:costproxy /data /app/data

# The SQLite ledger, keys and budgets (COSTPROXY_STORE_URL). /app/data only holds the local mirror
# used when the store is Redis.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080

# No curl in slim images: ask /healthz with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('COSTPROXY_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["costproxy"]
CMD ["serve"]
