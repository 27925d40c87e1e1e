# intent-router: multi-stage, slim, non-root.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 intent
COPY --from=build /install /usr/local
WORKDIR /srv
COPY migrations ./migrations
COPY app ./app
USER intent
# uvicorn with uvloop and httptools; INTENT_WORKERS sets the number of worker processes.
ENV PYTHONPATH=/srv INTENT_HOST=0.0.0.0 INTENT_PORT=8000 INTENT_WORKERS=1 \
    INTENT_DATABASE_URL=sqlite+aiosqlite:////home/intent/data/intent-router.db
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["intent-router", "serve"]
