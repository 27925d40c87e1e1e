"""Webhook signing (checked by the standardwebhooks reference), retry schedule, SSRF guard."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.delivery import signing
from app.delivery.retry import (
    JITTER,
    MAX_RETRY_AFTER,
    SCHEDULE,
    next_delay,
    parse_retry_after,
)
from app.delivery.ssrf import SsrfGuard, SsrfRefused
from app.errors import AppError

BODY = b'{"type":"lead.routed","data":{"decision_id":"dec_1","lead":{"email":"dana@acme.com"}}}'

# --- signing -----------------------------------------------------------------------


def test_spec_test_vector() -> None:
    """The example from the Standard Webhooks specification."""
    got = signing.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secret_is_a_whsec_key_of_24_random_bytes() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 24
    assert a != b
    Webhook(a)  # the reference library accepts it


def test_reference_library_verifies_our_headers() -> None:
    secret = signing.new_secret()
    h = signing.headers([secret], "dec_01J", int(time.time()), BODY)
    assert h["webhook-id"] == "dec_01J"
    assert h["content-type"] == "application/json"
    assert h["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, h) == {
        "type": "lead.routed",
        "data": {"decision_id": "dec_1", "lead": {"email": "dana@acme.com"}},
    }


def test_tampered_body_fails() -> None:
    secret = signing.new_secret()
    h = signing.headers([secret], "dec_01J", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"dana", b"dina"), h)
    assert not signing.verify(
        secret, "dec_01J", int(h["webhook-timestamp"]), BODY + b" ", h["webhook-signature"]
    )


def test_wrong_secret_fails() -> None:
    h = signing.headers([signing.new_secret()], "dec_01J", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, h)


def test_id_and_timestamp_are_signed() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    h = signing.headers([secret], "dec_01J", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**h, "webhook-id": "dec_02J"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**h, "webhook-timestamp": str(now - 1)})


def test_several_secrets_give_one_signature_each_and_each_verifies() -> None:
    secrets = [signing.new_secret() for _ in range(3)]
    now = int(time.time())
    h = signing.headers(secrets, "dec_01J", now, BODY)
    parts = h["webhook-signature"].split(" ")
    assert len(parts) == 3
    assert all(p.startswith("v1,") for p in parts)
    for secret, part in zip(secrets, parts, strict=True):
        Webhook(secret).verify(BODY, h, json_parse=False)  # the whole header
        Webhook(secret).verify(BODY, {**h, "webhook-signature": part}, json_parse=False)
        assert part == signing.sign(secret, "dec_01J", now, BODY)
        assert signing.verify(secret, "dec_01J", now, BODY, h["webhook-signature"])
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets[0]).verify(BODY, {**h, "webhook-signature": parts[1]})


def test_own_verify_ignores_other_versions() -> None:
    secret = signing.new_secret()
    sig = signing.sign(secret, "m", 1, BODY).split(",", 1)[1]
    assert signing.verify(secret, "m", 1, BODY, f"v1,{sig}")
    assert not signing.verify(secret, "m", 1, BODY, f"v1a,{sig}")
    assert not signing.verify(secret, "m", 1, BODY, "")


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    ),
    body=st.text(max_size=500),
    skew=st.integers(min_value=-240, max_value=240),
)
def test_reference_library_verifies_any_body(key: bytes, msg_id: str, body: str, skew: int) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    data = body.encode()
    h = signing.headers([secret], msg_id, int(time.time()) + skew, data)
    Webhook(secret).verify(data, h, json_parse=False)
    assert signing.verify(secret, msg_id, int(h["webhook-timestamp"]), data, h["webhook-signature"])


# --- retry schedule ----------------------------------------------------------------


def test_schedule_is_the_documented_one() -> None:
    assert SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_first_attempt_is_immediate() -> None:
    assert next_delay(0, rng=random.Random(1)) == 0.0


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(min_value=0, max_value=len(SCHEDULE) - 1), seed=st.integers())
def test_delays_follow_the_schedule_within_twenty_percent(attempts: int, seed: int) -> None:
    delay = next_delay(attempts, rng=random.Random(seed))
    assert delay is not None
    base = SCHEDULE[attempts]
    assert base * (1 - JITTER) <= delay <= base * (1 + JITTER)


def test_jitter_spreads_retries() -> None:
    delays = {next_delay(2, rng=random.Random(seed)) for seed in range(50)}
    assert len(delays) > 40
    assert min(d for d in delays if d is not None) < 300 < max(d for d in delays if d is not None)


@pytest.mark.parametrize("attempts", [8, 9, 100])
def test_exhausted_after_eight_attempts(attempts: int) -> None:
    assert next_delay(attempts) is None
    assert next_delay(attempts, retry_after=5) is None


def test_the_last_attempt_still_has_a_delay() -> None:
    delay = next_delay(7, rng=random.Random(3))
    assert delay is not None
    assert 36000 * 0.8 <= delay <= 36000 * 1.2


def test_retry_after_longer_than_the_schedule_wins() -> None:
    assert next_delay(1, retry_after=120, rng=random.Random(0)) == 120.0


def test_retry_after_shorter_than_the_schedule_does_not_hurry_us() -> None:
    delay = next_delay(3, retry_after=1, rng=random.Random(0))
    assert delay is not None
    assert 1800 * 0.8 <= delay <= 1800 * 1.2


def test_retry_after_is_capped() -> None:
    assert next_delay(1, retry_after=10 * 86400, rng=random.Random(0)) == MAX_RETRY_AFTER


def test_custom_schedule_and_no_jitter() -> None:
    assert next_delay(1, schedule=(0, 10), jitter=0) == 10.0
    assert next_delay(2, schedule=(0, 10), jitter=0) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), (None, None), ("", None), ("soon", None),
     ("-5", None)],
)  # fmt: skip
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, time.time()) == seconds


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 11, 23, 15, 4, 5, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 11, 23, 15, 6, 5, tzinfo=UTC), usegmt=True)
    assert later == "Mon, 23 Nov 2026 15:06:05 GMT"
    assert parse_retry_after(later, now) == 120.0
    earlier = format_datetime(datetime(2026, 11, 23, 15, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2"])
def test_parse_retry_after_survives_non_ascii_digits(value: str) -> None:
    # The receiver controls this header; httpx decodes byte 0xB2 (latin-1) to "²".
    assert parse_retry_after(value, time.time()) is None


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_retry_after_asctime_date_is_gmt_on_any_host(new_york: None) -> None:
    now = datetime(1994, 11, 6, 8, 47, 37, tzinfo=UTC).timestamp()
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now) == 120.0  # RFC 850
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now) == 120.0  # asctime


# --- SSRF guard --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.7/",
        "http://172.16.0.1/",
        "http://172.31.255.254/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",  # CGNAT
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "https://[2002:7f00:1::]/",  # 6to4 carrying 127.0.0.1
        "https://[2002:a9fe:a9fe::1]/",  # 6to4 carrying 169.254.169.254
        "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 carrying 169.254.169.254
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
        "http://0.0.0.0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://localhost/",
        "http://LOCALHOST:9000/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://127.1/",
        "http://0x7f000001/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "ftp://93.184.216.34/",
        "file:///etc/passwd",
        "gopher://93.184.216.34/",
        "93.184.216.34",
        "http:///nohost",
    ],
)
async def test_refuses_private_loopback_link_local_and_odd_urls(url: str) -> None:
    with pytest.raises(SsrfRefused) as info:
        await SsrfGuard([]).check_url(url)
    err = info.value
    assert isinstance(err, AppError)
    assert err.status == 422
    assert err.field == "url"
    assert err.code == "destination_refused"
    assert err.body()["field"] == "url"


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "https://93.184.216.34:8443/hook?x=1",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        "https://[2002:5db8:d822::1]/hook",  # 6to4 carrying the public 93.184.216.34
    ],
)
async def test_public_literal_ips_pass(url: str) -> None:
    await SsrfGuard([]).check_url(url)


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (["127.0.0.1"], "http://127.0.0.1:9000/hook"),
        (["localhost"], "http://localhost:9000/hook"),
        (["127.0.0.0/8"], "http://127.0.0.1:9000/hook"),
        (["127.0.0.0/8"], "http://127.8.9.10/hook"),
        (["10.0.0.0/8", "192.168.0.0/16"], "http://192.168.1.10/hook"),
        (["::1"], "http://[::1]:9000/hook"),
        (["::1/128"], "http://[::1]/hook"),
    ],
)
async def test_allow_list_lets_private_hosts_through(allowed: list[str], url: str) -> None:
    await SsrfGuard(allowed).check_url(url)


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (["127.0.0.1"], "http://10.0.0.1/"),
        (["127.0.0.0/8"], "http://192.168.1.10/"),
        (["127.0.0.0/8"], "ftp://127.0.0.1/"),
        (["192.168.1.10"], "http://192.168.1.11/"),
    ],
)
async def test_allow_list_allows_only_what_it_names(allowed: list[str], url: str) -> None:
    with pytest.raises(SsrfRefused):
        await SsrfGuard(allowed).check_url(url)


async def test_localhost_is_checked_by_what_it_resolves_to() -> None:
    """A CIDR allow-list entry covers names that resolve into it (localhost → 127.0.0.1)."""
    with pytest.raises(SsrfRefused) as info:
        await SsrfGuard(["10.0.0.0/8"]).check_url("http://localhost/")
    assert "127.0.0.1" in info.value.message or "::1" in info.value.message


@pytest.mark.parametrize("url", ["http://localhost:99999/", "http://example.com:abc/"])
async def test_bad_port_is_refused_not_crashing(url: str) -> None:
    with pytest.raises(SsrfRefused):
        await SsrfGuard([]).check_url(url)
