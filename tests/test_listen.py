"""``intent-router listen`` run as a user runs it: webhooks signed by the Standard Webhooks
library (not by our own signing code) are verified with the libraries' ±5 minute timestamp
tolerance; what does not verify is a 400 that says why, and is printed as refused."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from app.delivery.signing import new_secret
from tests.support.harness import free_port

CLI = str(Path(sys.executable).parent / "intent-router")
BODY = orjson.dumps({"type": "lead.routed", "lead": {"email": "dana@acme.com"}})


class Listener:
    def __init__(self, *args: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [CLI, "listen", "--port", self.url.rsplit(":", 1)[1], *args],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, "".join(self.lines)
            try:
                httpx.get(self.url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "listen did not start"
                time.sleep(0.05)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def post(self, headers: dict[str, str], body: bytes = BODY) -> httpx.Response:
        return httpx.post(self.url + "/hook", content=body, headers=headers, timeout=10)

    def printed(self, text: str) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def listener(secret: str) -> Iterator[Listener]:
    running = Listener("--secret", secret)
    yield running
    running.stop()


def signed(secret: str, msg_id: str, at: float, body: bytes = BODY) -> dict[str, str]:
    """Headers as the Standard Webhooks library signs."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def test_a_fresh_signed_webhook_verifies(listener: Listener, secret: str) -> None:
    r = listener.post(signed(secret, "msg_fresh", time.time()))
    assert r.status_code == 204
    assert listener.printed("--- webhook msg_fresh (signature ok)")
    assert listener.printed('"email": "dana@acme.com"')
    # Within the tolerance either way (the libraries accept these too).
    for offset, msg_id in ((-280, "msg_early"), (280, "msg_ahead")):
        headers = signed(secret, msg_id, time.time() + offset)
        Webhook(secret).verify(BODY, headers)
        assert listener.post(headers).status_code == 204, offset
        assert listener.printed(f"--- webhook {msg_id} (signature ok)")


def test_a_timestamp_beyond_five_minutes_is_refused_as_the_libraries_refuse_it(
    listener: Listener, secret: str
) -> None:
    for offset, msg_id, why in ((-320, "msg_old", "too old"), (320, "msg_new", "too new")):
        headers = signed(secret, msg_id, time.time() + offset)
        with pytest.raises(Exception, match="Message timestamp"):
            Webhook(secret).verify(BODY, headers)
        r = listener.post(headers)
        assert r.status_code == 400 and why in r.text and "±300 s" in r.text
        assert listener.printed(f"--- webhook {msg_id} (REFUSED: timestamp {why}")


def test_a_wrong_signature_missing_headers_and_a_bad_timestamp_are_refused(
    listener: Listener, secret: str
) -> None:
    other = "whsec_" + base64.b64encode(b"k" * 24).decode()
    r = listener.post(signed(other, "msg_forged", time.time()))
    assert r.status_code == 400 and "no signature matches" in r.text
    assert listener.printed("--- webhook msg_forged (REFUSED: no signature matches")
    tampered = signed(secret, "msg_tampered", time.time())
    assert listener.post(tampered, BODY.replace(b"dana", b"eve")).status_code == 400
    r = listener.post({"content-type": "application/json"})
    assert r.status_code == 400 and "missing webhook-id" in r.text
    bad_time = {**signed(secret, "msg_t", time.time()), "webhook-timestamp": "soon"}
    r = listener.post(bad_time)
    assert r.status_code == 400 and "not a Unix time" in r.text
    # A body that is not JSON is shown as text, not a crash.
    text = b"not json"
    r = listener.post(signed(secret, "msg_text", time.time(), text), text)
    assert r.status_code == 204 and listener.printed("not json")


def test_without_a_secret_everything_is_printed_unsigned() -> None:
    running = Listener()
    try:
        r = running.post({"webhook-id": "msg_plain", "content-type": "application/json"})
        assert r.status_code == 204
        assert running.printed("--- webhook msg_plain (unsigned)")
    finally:
        running.stop()
