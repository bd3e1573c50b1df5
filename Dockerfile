# The worker image: a worker-only install (no torch, no transformers).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
COPY models ./models
COPY export ./export
RUN pip install --no-cache-dir .
EXPOSE 6066
CMD ["interest-stream", "worker"]
