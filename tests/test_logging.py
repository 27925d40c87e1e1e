"""Structured logs: JSON lines correlated by request, event and decision id; no secrets."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import httpx
import orjson

from app.observability.logging import REDACTED, JsonFormatter, redact
from tests.support.harness import Spawned, eventually, receiver
from tests.support.scenarios import hot_events


def test_credentials_are_redacted_wherever_they_appear() -> None:
    key = "ir_pmBwY-BfJx2If3SU9jnhgfa1ILQOFwNEkdF4PYsLiKw"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert redact(f"key {key} and {secret}") == f"key {REDACTED} and {REDACTED}"
    assert redact("authorization: Bearer abc.def-123") == f"authorization: {REDACTED}"
    assert redact("Basic aXJfc2VjcmV0Og==") == REDACTED
    assert redact("lead dana@acme.com scored 85") == "lead dana@acme.com scored 85"


def test_the_formatter_writes_one_json_object_with_the_extras_and_redacts_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logging.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "sent with %s",
            "ir_AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            extra={"decision_id": "dec_1", "headers": {"authorization": "Bearer xyz"}},
        )
        try:
            raise ValueError("whsec_c2VjcmV0c2VjcmV0c2VjcmV0")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["logger"] == "test.logging.json"
    assert first["msg"] == f"sent with {REDACTED}"
    assert first["decision_id"] == "dec_1"
    assert first["headers"] == {"authorization": REDACTED}
    assert "whsec_" not in second["error"] and "ValueError" in second["error"]


async def test_a_request_its_batch_and_its_delivery_are_one_line_each_and_correlate(
    database_url: str,
) -> None:
    async with receiver() as hook:
        proc = Spawned(
            {
                "INTENT_DATABASE_URL": database_url,
                "INTENT_DELIVERY_ALLOWED_HOSTS": "127.0.0.1",
                "INTENT_LOG_LEVEL": "info",
            }
        )
        try:
            proc.start()
            key = proc.read_key()
            headers = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=30) as c:
                await c.put(
                    "/v1/accounts",
                    json={
                        "accounts": [{"domain": "acme.com", "tier": "tier_1", "owner": "jo@x.io"}]
                    },
                )
                r = await c.post("/v1/destinations", json={"name": "crm", "url": hook.url})
                secret = r.json()["secret"]
                r = await c.post(
                    "/v1/events",
                    json={"events": hot_events("log", time.time())},
                    headers={"x-request-id": "req-log-1"},
                )
                assert r.status_code == 202, r.text
                assert r.headers["x-request-id"] == "req-log-1"
                generated = (await c.get("/healthz")).headers["x-request-id"]
                assert len(generated) == 32
                await c.get("/v1/leads", headers={"authorization": "Bearer ir_not_a_real_key_x"})
            [webhook] = await hook.wait_for(1)
            decision_id = webhook.headers["webhook-id"]

            def lines() -> list[dict[str, Any]]:
                return [orjson.loads(x) for x in proc.output if x.startswith("{")]

            async def delivery_logged() -> list[dict[str, Any]]:
                return [x for x in lines() if x.get("delivery_id")]

            [delivery] = await eventually(delivery_logged)
        finally:
            proc.stop()
    logged = lines()
    [request] = [x for x in logged if x.get("request_id") == "req-log-1"]
    assert (request["method"], request["path"], request["status"]) == ("POST", "/v1/events", 202)
    assert request["duration_ms"] > 0
    [batch] = [x for x in logged if "req-log-1" in x.get("request_ids", ())]
    assert batch["event_ids"] == ["log-1", "log-2"]
    assert batch["decision_ids"] == [decision_id]
    assert batch["trigger_event_ids"] == ["log-2"]
    assert (delivery["decision_id"], delivery["outcome"], delivery["attempt"]) == (
        decision_id,
        "delivered",
        1,
    )
    assert any(x.get("status") == 401 for x in logged)
    text = "".join(line for line in proc.output if line.startswith("{"))
    assert key not in text and secret not in text and "ir_not_a_real_key_x" not in text
