# Production image: the worker and its CLI, no embedded servers.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY trading ./trading
COPY strategy ./strategy
COPY exchange ./exchange
COPY coordination ./coordination
COPY ledger ./ledger
COPY market ./market
COPY broker ./broker
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --uid 10001 tradefleet
USER tradefleet
ENTRYPOINT ["python", "-m", "worker"]
CMD ["run"]
