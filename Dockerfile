# intent-router: multi-stage, slim, non-root, reproducible.
# The base image is pinned by digest (the multi-architecture index of
# python:3.11.14-slim-bookworm), so every build starts from the same bytes; to move to a
# newer Python or Debian patch, take the new tag's index digest from the registry
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and change both lines.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
WORKDIR /src
# Dependencies exactly as locked, each checked against its hash (a layer of its own: it is
# rebuilt only when the lock changes); then the package itself, without resolving again.
COPY requirements.lock ./
RUN pip install --no-cache-dir --prefix=/install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
RUN useradd --create-home --uid 10001 intent
COPY --from=build /install /usr/local
WORKDIR /srv
COPY migrations ./migrations
COPY app ./app
USER intent
# uvicorn with uvloop and httptools; INTENT_WORKERS sets the number of worker processes.
# With the embedded SQLite default the secret key is kept next to the database
# (/home/intent/data/secret.key); with PostgreSQL set INTENT_SECRET_KEY.
ENV PYTHONPATH=/srv INTENT_HOST=0.0.0.0 INTENT_PORT=8000 INTENT_WORKERS=1 \
    INTENT_DATABASE_URL=sqlite+aiosqlite:////home/intent/data/intent-router.db
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["intent-router", "serve"]
