"""Hostile input against the real service, a separate OS process on SQLite and PostgreSQL
(issue 13): every reproduction of the issue, then generated bodies (hypothesis) over JSON
and YAML shapes, nesting, sizes and encodings on the ingest, Segment, hook, policy and
accounts routes. After each request: never a 5xx nor a reset connection, the process up,
its RSS below its RSS at start + 300 MB at every 20 ms sample; after each policy case the
service starts again on the same database and is ready."""

from __future__ import annotations

import copy
import csv
import gzip
import io
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.policy.defaults import default_policy_raw, default_policy_text
from tests.support.harness import event
from tests.support.hostile import (
    BODY_TIMEOUT_SECONDS,
    MB,
    Deep,
    Hostile,
    accounts_csv,
    basic,
    billion_laughs,
    dumps,
    gzip_bomb,
    nested_any,
    nested_list,
    open_stalled,
    outcome_of,
    policy_with_industry,
    typeform_headers,
)

# Bodies of a megabyte are the point here; hypothesis warns when it writes their repr.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    h = Hostile(request.param, tmp_path_factory.mktemp(request.param))
    yield h
    h.close()


@pytest.fixture
def svc(hostile: Hostile) -> Hostile:
    hostile.ensure_up()
    return hostile


def send(svc: Hostile, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request: never a 5xx nor a dropped connection, and the service still healthy."""
    headers = kw.pop("headers", None)
    auth = kw.pop("auth", True)
    hdrs = {"authorization": f"Bearer {svc.key}"} if auth else {}
    hdrs.update(headers or {})
    try:
        r = svc.http().request(method, path, headers=hdrs, **kw)
    except httpx.TransportError as exc:
        svc.proc.check(f"{method} {path} ({type(exc).__name__})")
        raise AssertionError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
    if r.status_code >= 500:
        sent = kw.get("content") or b""
        raise AssertionError(
            f"{method} {path} → {r.status_code} {r.text[:300]}\nsent: {sent[:300]!r}\n"
            f"the service's last error: {svc.proc.last_error()}"
        )
    svc.proc.check(f"{method} {path} → {r.status_code}")
    return r


JSON_TYPE = {"content-type": "application/json"}


def refused(r: httpx.Response, status: int | None = None, field: str | None = None) -> None:
    """A clear 4xx with the service's error body."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    if field is not None:
        assert body.get("field") == field, body


def native(event_id: str | None = None, **kw: Any) -> dict[str, Any]:
    out = event(
        event_id or f"h-{uuid.uuid4().hex[:12]}",
        "pricing_page_view",
        time.time(),
        email="dana@acme.com",
        title="VP Sales",
    )
    out.update(kw)
    return out


def post_json(svc: Hostile, path: str, body: Any, **headers: str) -> httpx.Response:
    return send(
        svc,
        "POST",
        path,
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **headers},
    )


# -- policy: each case, then a restart on the same database ------------------------------


def put_policy(svc: Hostile, text: str | bytes, ctype: str) -> httpx.Response:
    content = text.encode() if isinstance(text, str) else text
    return send(svc, "PUT", "/v1/policy", content=content, headers={"content-type": ctype})


def restarts_and_loads(svc: Hostile, version_before: int) -> None:
    """The service starts again on its database, is ready, and serves its policy; a
    version the case stored is replaced by the default so the next case starts clean."""
    svc.restart()
    r = httpx.get(svc.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    r = send(svc, "GET", "/v1/policy")
    assert r.status_code == 200, r.text
    assert len(r.content) < MB, f"the policy in force is {len(r.content)} bytes"
    if r.json()["version"] != version_before:
        r = put_policy(svc, default_policy_text(), "application/yaml")
        assert r.status_code == 200, r.text


def policy_version(svc: Hostile) -> int:
    r = send(svc, "GET", "/v1/policy")
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def _json_policy(industry: dict[str, Any]) -> bytes:
    raw = default_policy_raw()
    raw["fit"]["rules"][1]["when"] = industry
    return orjson.dumps(raw)


def _signal_policy(**signal: Any) -> bytes:
    raw = default_policy_raw()
    raw["signals"]["demo_request"] = {"points": 20, "half_life": "14d", **signal}
    return orjson.dumps(raw)


def _surrogate_json() -> bytes:
    raw = default_policy_raw()
    raw["fit"]["rules"][1]["name"] = "SURROGATE"
    return orjson.dumps(raw).replace(b"SURROGATE", b"\\ud800")


POLICY_CASES = {
    "billion-laughs-8": (billion_laughs(8), "application/yaml"),
    "billion-laughs-7": (billion_laughs(7), "application/yaml"),
    "in-list-of-lists": (
        _json_policy({"field": "account.industry", "in": [["software"]]}),
        "application/json",
    ),
    "in-list-of-objects": (
        _json_policy({"field": "account.industry", "in": [{"a": 1}]}),
        "application/json",
    ),
    "yaml-any-nested-600": (nested_any(600), "application/yaml"),
    "yaml-list-nested-1000": (nested_list(1000), "application/yaml"),
    "yaml-recursive-alias": (
        policy_with_industry("&loop {field: account.industry, any: [*loop]}"),
        "application/yaml",
    ),
    "surrogate-json": (_surrogate_json(), "application/json"),
    "surrogate-yaml": (
        default_policy_text().replace("name: industry_in_icp", 'name: "\\ud800"'),
        "application/yaml",
    ),
    "yaml-python-tag": (
        policy_with_industry("{field: account.industry, eq: !!python/object/apply:os.getpid []}"),
        "application/yaml",
    ),
    "yaml-merge-key-laughs": (
        "a: &a {x: 1, y: 2}\nb: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a]}\n"
        + "".join(
            f"c{i}: &c{i} [" + ", ".join([f"*{'b' if i == 0 else f'c{i - 1}'}"] * 10) + "]\n"
            for i in range(8)
        ),
        "application/yaml",
    ),
    "half-life-1ms": (_signal_policy(half_life="1ms"), "application/json"),
    "points-1e308": (_signal_policy(points=1e308), "application/json"),
}


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_policy_reproduction_is_refused_and_the_service_restarts(svc: Hostile, case: str) -> None:
    text, ctype = POLICY_CASES[case]
    before = policy_version(svc)
    r = put_policy(svc, text, ctype)
    refused(r)
    restarts_and_loads(svc, before)


# -- bodies the parser or the pipeline choked on ---------------------------------------------


@pytest.mark.parametrize("route", ["segment-batch", "segment-identify", "events", "hook"])
def test_user_id_nested_1000_deep(svc: Hostile, route: str) -> None:
    deep = Deep("u-deep", 1000, "dict")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    msg = {"type": "identify", "userId": deep, "messageId": "deep-1", "timestamp": now}
    json = {"content-type": "application/json"}
    if route == "segment-batch":
        body = dumps({"batch": [msg]})
        send(svc, "POST", "/v1/batch", content=body, headers={**json, **basic(svc.write_key)})
    elif route == "segment-identify":
        send(svc, "POST", "/v1/identify", content=dumps(msg), headers=basic(svc.write_key))
    elif route == "events":
        body = dumps(native(lead={"user_id": deep}))
        refused(send(svc, "POST", "/v1/events", content=body, headers=json), 422, "lead.user_id")
    else:
        body = dumps(
            {"event_id": "d1", "event_type": "form_response", "form_response": {"token": deep}}
        )
        send(svc, "POST", "/v1/hooks/tf", content=body, headers=typeform_headers(body))
    # The connection was not reset and the next request is served.
    assert post_json(svc, "/v1/events", native()).status_code == 202


@pytest.mark.parametrize(
    "field",
    [
        "type",
        "event",
        "messageId",
        "timestamp",
        "traits",
    ],
)
def test_segment_fields_nested_1000_deep(svc: Hostile, field: str) -> None:
    """Found by the generated cases: ``str()`` of a ``type`` nested 1,000 deep (its repr in
    the refusal) was a RecursionError, a 500."""
    msg = {"type": "track", "event": "Demo Requested", "anonymousId": "a-deep"}
    msg[field] = Deep("x", 1000, "dict")
    r = send(svc, "POST", "/v1/track", content=dumps(msg), headers=basic(svc.write_key), auth=False)
    assert r.status_code in (200, 400), r.text


def test_an_event_over_32_kb_nested_300_deep_is_refused(svc: Hostile) -> None:
    """Found by the generated cases: measuring the event by serialising it again failed
    past orjson's 255 levels (a 500)."""
    big = native(properties={"deep": Deep("x" * 40_000, 300, "dict")})
    refused(send(svc, "POST", "/v1/events", content=dumps(big), headers=JSON_TYPE))


def test_an_event_nested_300_deep_is_rejected_alone_in_a_batch(svc: Hostile) -> None:
    """Found by the generated cases: an event whose payload cannot be written again made
    the whole batch a 422 ("nothing was accepted"), with a traceback in the log."""
    ok = native()
    deep = native(properties={"deep": Deep(1, 300, "list")})
    r = send(svc, "POST", "/v1/events", content=dumps({"events": [ok, deep]}), headers=JSON_TYPE)
    assert r.status_code == 202, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"], r.text


@pytest.mark.parametrize("chunked", [False, True], ids=["short-content-length", "false-chunk-size"])
def test_bodies_that_never_arrive_time_out(svc: Hostile, chunked: bool) -> None:
    seen = len(svc.proc.output)
    held = [open_stalled(svc.url, "/v1/events", svc.key, chunked=chunked) for _ in range(1000)]
    # Held requests do not stop others.
    assert post_json(svc, "/v1/events", native()).status_code == 202
    outcomes = [outcome_of(s, within=BODY_TIMEOUT_SECONDS * 5) for s in held]
    still_open = sum(1 for o in outcomes if o[0] == "open")
    assert still_open == 0, (
        f"{still_open} of 1000 requests still open after {BODY_TIMEOUT_SECONDS * 5}s"
    )
    answers = {status for kind, status in outcomes if kind == "answered"}
    assert all(s is not None and 400 <= s < 500 for s in answers), answers
    svc.proc.check("after the stalled bodies")
    logged = "".join(svc.proc.output[seen:])
    assert "Traceback" not in logged, logged[-3000:]


def test_a_one_megabyte_email_is_refused(svc: Hostile) -> None:
    email = "a" * (1000 * 1000) + "@acme.com"
    refused(post_json(svc, "/v1/events", native(lead={"email": email})))
    assert send(svc, "GET", f"/v1/leads/{email[:2000]}").status_code in (404, 422)


def test_an_email_over_320_characters_is_422(svc: Hostile) -> None:
    email = "a" * 10_000 + "@acme.com"  # under the 32 KB event limit: the field's own bound
    refused(post_json(svc, "/v1/events", native(lead={"email": email})), 422, "lead.email")


NUL_CASES = {
    "event_id": ({"event_id": "evt\x00-1"}, "event_id"),
    "source": ({"source": "web\x00"}, "source"),
    "lead.email": ({"lead": {"email": "dana\x00@acme.com"}}, "lead.email"),
    "lead.anonymous_id": ({"lead": {"anonymous_id": "a\x00b"}}, "lead.anonymous_id"),
    "lead.user_id": ({"lead": {"user_id": "u\x00"}}, "lead.user_id"),
    "lead.title": ({"lead": {"email": "dana@acme.com", "title": "VP\x00Sales"}}, "lead.title"),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_bytes_in_event_fields_are_422(svc: Hostile, case: str) -> None:
    patch, field = NUL_CASES[case]
    refused(post_json(svc, "/v1/events", native(**patch)), 422, field)


def test_nul_byte_in_a_destination_name_is_422(svc: Hostile) -> None:
    r = post_json(svc, "/v1/destinations", {"name": "crm\x00", "url": "http://127.0.0.1:9/x"})
    refused(r, 422, "name")


def test_nul_bytes_in_segment_messages_are_rejected_alone(svc: Hostile) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch = [
        {"type": "identify", "userId": "u\x00", "messageId": "n1", "timestamp": now},
        {
            "type": "identify",
            "userId": "u-ok",
            "messageId": "n2",
            "timestamp": now,
            "traits": {"email": "nul\x00@acme.com", "title": "VP\x00"},
        },
    ]
    r = post_json(svc, "/v1/batch", {"batch": batch}, **basic(svc.write_key))
    assert r.status_code in (200, 400), r.text
    r = send(svc, "GET", "/v1/leads", params={"limit": 200})
    assert "\\u0000" not in r.text and "\x00" not in r.text


@pytest.mark.parametrize("char", ["\r", "\n", "\t"], ids=["cr", "lf", "tab"])
def test_destination_url_with_control_characters_is_422(svc: Hostile, char: str) -> None:
    url = f"http://127.0.0.1:9/hook{char}x"
    r = post_json(svc, "/v1/destinations", {"name": f"crm-{ord(char)}", "url": url})
    if r.status_code == 201:  # the defect: then at least the test send must not be a 500
        dest = r.json()["id"]
        send(svc, "POST", f"/v1/destinations/{dest}/test")
        send(svc, "DELETE", f"/v1/destinations/{dest}")
    refused(r, 422, "url")


def test_segment_batch_of_110000_messages_is_refused(svc: Hostile) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch = [
        {
            "type": "track",
            "anonymousId": f"flood-{i}",
            "event": "Demo Requested",
            "messageId": f"f-{i}",
            "timestamp": now,
        }
        for i in range(110_000)
    ]
    packed = gzip.compress(orjson.dumps({"batch": batch}), 6)
    assert len(packed) < 2 * MB
    single: list[httpx.Response] = []

    def alone() -> None:  # a single event meanwhile is still served
        time.sleep(0.2)
        single.append(post_json(svc, "/v1/events", native()))

    t = threading.Thread(target=alone)
    t.start()
    r = send(
        svc,
        "POST",
        "/v1/batch",
        content=packed,
        headers={"content-encoding": "gzip", **basic(svc.write_key)},
        auth=False,
    )
    t.join()
    # Segment documents a 400 for a batch over its limits; a body over a limit as it is
    # read (or gunzipped) is the service's 413. Either way refused before it is parsed.
    assert r.status_code in (400, 413), r.text
    refused(r)
    assert single and single[0].status_code == 202, single
    assert send(svc, "GET", "/v1/leads/anon:flood-1").status_code == 404


def test_a_600_kb_event_is_413_alone_and_rejected_in_a_batch(svc: Hostile) -> None:
    big = native(properties={"blob": "x" * (600 * 1024)})
    refused(post_json(svc, "/v1/events", big), 413)
    r = post_json(svc, "/v1/events", {"events": [native(), big]})
    assert r.status_code == 202, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]


@pytest.mark.parametrize(
    "name",
    ['=HYPERLINK("http://evil.example","x")', "@SUM(1+1)*cmd|' /C calc'!A0", "+1+cmd"],
    ids=["hyperlink", "at", "plus"],
)
def test_source_names_are_not_formulas_in_the_csv_report(svc: Hostile, name: str) -> None:
    r = post_json(svc, "/v1/events", native(source=name))
    assert r.status_code in (202, 422), r.text
    r = send(svc, "GET", "/v1/reports/sources", params={"format": "csv", "group_by": "source"})
    assert r.status_code == 200, r.text
    cells = [c for row in csv.reader(io.StringIO(r.text)) for c in row]
    live = [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or _dash_formula(c)]
    assert not live, live


def _dash_formula(cell: str) -> bool:
    if not cell.startswith("-"):
        return False
    try:
        float(cell)
    except ValueError:
        return True
    return False


# ~31 MiB took 4.9 s and +0.5 GB before its 422 in the issue; it is made in memory.
def test_a_31_mib_accounts_csv_is_refused_before_it_is_parsed(svc: Hostile) -> None:
    body = accounts_csv(31 * MB)
    r = send(svc, "PUT", "/v1/accounts", content=body, headers={"content-type": "text/csv"})
    refused(r)
    assert send(svc, "GET", "/v1/accounts/d0000001.example.com").status_code == 404


def test_a_31_mib_accounts_json_keeps_rss_bounded(svc: Hostile) -> None:
    row = b'{"domain":"j%07d.example.com","name":"Acme %07d","tier":"tier_1"},'
    rows = b"".join(row % (i, i) for i in range(31 * MB // len(row % (0, 0))))
    body = b'{"accounts":[' + rows[:-1] + b"]}"
    r = send(svc, "PUT", "/v1/accounts", content=body, headers={"content-type": "application/json"})
    refused(r)


def test_a_segment_batch_of_2501_messages_is_400(svc: Hostile) -> None:
    batch = [
        {"type": "track", "anonymousId": f"b-{i}", "event": "Demo Requested"} for i in range(2501)
    ]
    r = post_json(svc, "/v1/batch", {"batch": batch}, **basic(svc.write_key))
    assert r.status_code == 400, r.text
    assert send(svc, "GET", "/v1/leads/anon:b-1").status_code == 404


@pytest.mark.parametrize(
    "request_id",
    ["KEY", "x" * 5000, "id with spaces;and=signs", "ir_" + "A" * 43],
    ids=["the-admin-key", "5000-chars", "separators", "key-shaped"],
)
def test_a_hostile_request_id_is_not_echoed_nor_logged(svc: Hostile, request_id: str) -> None:
    sent = svc.key if request_id == "KEY" else request_id
    seen = len(svc.proc.output)
    r = send(svc, "GET", "/v1/policy", headers={"x-request-id": sent})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id") != sent
    logged = wait_for_log(svc, seen, "/v1/policy")  # the request's line, after the answer
    assert sent not in logged


def wait_for_log(svc: Hostile, seen: int, needle: str) -> str:
    """The service's output since line ``seen`` once it holds ``needle``."""
    for _ in range(100):
        logged = "".join(svc.proc.output[seen:])
        if needle in logged:
            return logged
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged:\n{logged[-2000:]}")


BOMB_ROUTES = ["/v1/events", "/v1/batch", "/v1/hooks/tf", "/v1/policy", "/v1/accounts"]


@pytest.mark.parametrize("path", BOMB_ROUTES)
def test_a_gzip_bomb_is_refused(svc: Hostile, path: str) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 64 * 1024
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    if path == "/v1/batch":
        headers.update(basic(svc.write_key))
    method = "PUT" if path in ("/v1/policy", "/v1/accounts") else "POST"
    r = send(svc, method, path, content=bomb, headers=headers, auth=path != "/v1/batch")
    refused(r, 413)


def test_metrics_do_not_grow_with_distinct_sources(svc: Hostile) -> None:
    before = len(send(svc, "GET", "/metrics", auth=False).content)
    for n in range(2):
        batch = [native(source=f"src-{n}-{i}-{uuid.uuid4().hex[:6]}") for i in range(1000)]
        assert post_json(svc, "/v1/events", {"events": batch}).status_code == 202
    after = len(send(svc, "GET", "/metrics", auth=False).content)
    assert after - before < 100 * 1024, (before, after)
    assert "src-0-0-" not in r_text(svc, "/metrics"), "an unregistered source is a label"


def r_text(svc: Hostile, path: str) -> str:
    return send(svc, "GET", path, auth=False).text


# -- generated -------------------------------------------------------------------------------

SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 5e-324, 0.0, 2**63, -(2**63)])
    | st.text(max_size=40)
    | st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8)
    | st.sampled_from(["", "dana@acme.com", "acme.com", "1ms", "14d", "\ud7ff", "=1+1"])
    | st.integers(min_value=0, max_value=64 * 1024).map(lambda n: "x" * n)
    # Around the limits: an event's 32 KB, a Segment batch's 500 KB, a body's 1 MiB.
    | st.sampled_from([32 * 1024 - 300, 32 * 1024 + 1, 500 * 1024 + 1, MB + 1]).map(
        lambda n: "x" * n
    )
)
JSON = st.recursive(
    SCALAR,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=20,
)


# Depths around the parsers' and serialisers' limits (orjson: 255 to write, 1024 to read;
# Python's recursion limit: 1000), and any up to 3000.
DEPTH = st.sampled_from([64, 254, 255, 256, 300, 999, 1000, 1023, 1024, 1025, 3000]) | st.integers(
    0, 3000
)
NESTED = st.builds(Deep, JSON, DEPTH, st.sampled_from(["list", "dict"]))
VALUES = JSON | NESTED


@st.composite
def encoded(draw: st.DrawFn, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """``raw`` as sent: plain, with a BOM, UTF-16, broken UTF-8, truncated or gzipped."""
    how = draw(
        st.sampled_from(
            ["plain"] * 4 + ["bom", "utf16", "invalid", "truncated", "gzip", "gzip", "gzip-cut"]
        )
    )
    if how == "bom":
        return b"\xef\xbb\xbf" + raw, {}
    if how == "utf16":
        return raw.decode("utf-8", "replace").encode("utf-16"), {}
    if how == "invalid":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(
            st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"])
        ) + raw[at:], {}
    if how == "truncated":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))], {}
    packed = gzip.compress(raw, 1)
    if how == "gzip-cut":
        packed = packed[: draw(st.integers(0, len(packed) - 1))]
    return packed, {"content-encoding": "gzip"}


def as_bodies(
    docs: st.SearchStrategy[Any],
) -> st.SearchStrategy[tuple[bytes, bytes, dict[str, str]]]:
    """(the bytes signed, the bytes sent, headers)."""
    raw = docs.map(dumps)
    return raw.flatmap(lambda b: encoded(b).map(lambda e: (b, *e)))


def fuzz(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking: a failure's body is in its message (derandomized, so it comes
        # back), and the file's run time stays bounded when a case fails.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def mutate(base: Any, path: list[Any], value: Any) -> Any:
    out = copy.deepcopy(base)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


EVENT_PATHS = [
    ["event_id"],
    ["type"],
    ["occurred_at"],
    ["source"],
    ["lead"],
    ["lead", "email"],
    ["lead", "user_id"],
    ["lead", "title"],
    ["lead", "traits"],
    ["account"],
    ["properties"],
    ["events"],
]


@fuzz(60)
@given(
    st.tuples(st.sampled_from(EVENT_PATHS), VALUES)
    .map(lambda pv: mutate(native("fz"), *pv))
    .flatmap(lambda d: as_bodies(st.just(d)))
    | as_bodies(VALUES)
)
def test_generated_events(svc: Hostile, body: tuple[bytes, bytes, dict[str, str]]) -> None:
    _, sent, headers = body
    send(
        svc,
        "POST",
        "/v1/events",
        content=sent,
        headers={"content-type": "application/json", **headers},
    )


SEGMENT_KEYS = [
    "type",
    "userId",
    "anonymousId",
    "event",
    "name",
    "traits",
    "properties",
    "context",
    "messageId",
    "timestamp",
    "groupId",
    "previousId",
    "integrations",
]
SEGMENT_MESSAGE = st.dictionaries(st.sampled_from(SEGMENT_KEYS), VALUES, max_size=6).map(
    lambda m: {"type": "track", "event": "Demo Requested", "userId": "u-fz", **m}
)


SEGMENT_BODIES = st.one_of(
    st.tuples(
        st.just("/v1/batch"),
        st.fixed_dictionaries({"batch": st.lists(SEGMENT_MESSAGE, max_size=4)}),
    ),
    st.tuples(
        st.sampled_from(["/v1/track", "/v1/identify", "/v1/page", "/v1/batch"]), SEGMENT_MESSAGE
    ),
    st.tuples(st.sampled_from(["/v1/batch", "/v1/track"]), VALUES),
)


@fuzz(60)
@given(SEGMENT_BODIES.flatmap(lambda rb: as_bodies(st.just(rb[1])).map(lambda b: (rb[0], *b))))
def test_generated_segment(svc: Hostile, body: tuple[str, bytes, bytes, dict[str, str]]) -> None:
    path, _, sent, headers = body
    send(svc, "POST", path, content=sent, headers={**basic(svc.write_key), **headers}, auth=False)


TYPEFORM = {
    "event_id": "01FZ",
    "event_type": "form_response",
    "form_response": {
        "form_id": "f1",
        "token": "tok-1",
        "submitted_at": "2026-01-01T00:00:00Z",
        "definition": {"title": "Demo"},
        "hidden": {"utm_campaign": "q4"},
        "answers": [
            {"type": "email", "email": "tf@acme.com", "field": {"id": "e", "ref": "email"}}
        ],
    },
}
TYPEFORM_PATHS = [
    ["event_id"],
    ["event_type"],
    ["form_response"],
    ["form_response", "token"],
    ["form_response", "submitted_at"],
    ["form_response", "hidden"],
    ["form_response", "answers"],
    ["form_response", "answers", 0, "email"],
    ["form_response", "answers", 0, "type"],
    ["form_response", "definition"],
]


@fuzz(40)
@given(
    as_bodies(
        st.tuples(st.sampled_from(TYPEFORM_PATHS), VALUES).map(lambda pv: mutate(TYPEFORM, *pv))
    )
)
def test_generated_hooks(svc: Hostile, body: tuple[bytes, bytes, dict[str, str]]) -> None:
    signed, sent, headers = body
    send(svc, "POST", "/v1/hooks/tf", content=sent, headers={**typeform_headers(signed), **headers})


POLICY_PATHS = [
    ["scoring"],
    ["scoring", "bands"],
    ["scoring", "bands", 0, "min"],
    ["signals"],
    ["signals", "demo_request"],
    ["signals", "demo_request", "points"],
    ["signals", "demo_request", "half_life"],
    ["fit", "rules", 0, "when"],
    ["fit", "rules", 1, "when", "in"],
    ["fit", "rules", 2, "when", "matches"],
    ["lists", "free_mail"],
    ["segment", "track"],
    ["routing", "rules", 0, "when"],
    ["routing", "cooldown"],
    ["teams"],
    ["teams", "inbound", "members"],
]


def _aliased(value: Any) -> Any:
    return [value, value, [value, value]]


POLICY_DOCS = st.tuples(st.sampled_from(POLICY_PATHS), VALUES | VALUES.map(_aliased)).map(
    lambda pv: mutate(default_policy_raw(), *pv)
)


YAML_ALPHABET = st.sampled_from(
    [*"&*!|>'\"%@`{}[]:,-?#\n\t <=.~0123456789abcxyz", "\ud800", "\x00", "\ufeff"]
)
YAML_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "&a [*a]",
            "&a {k: *a}",
            "*undefined",
            "!!python/name:os.system",
            "!!binary ZZZ",
            "%YAML 1.1\n---\n",
            "--- !!set {a, b}",
            "? [a, b]\n: c",
            "<<: *a",
            "a: &a [1]",
            "signals: {x: {points: 1e308, half_life: 0.001}}",
            "scoring: !!map {}",
            "[" * 600,
            "{a: " * 600,
            '"\\ud800"',
            "x: 0x7fffffffffffffffffff",
            "- - - -",
            "fit: {rules: [{name: a, points: 1, when: {not: {not: {field: lead.x, eq: 1}}}}]}",
        ]
    ),
    max_size=6,
).map("\n".join)


def test_generated_policies_then_restart(svc: Hostile) -> None:
    """Generated documents, accepted or not; then one restart on the same database (a
    restart after each would cost minutes)."""
    before = policy_version(svc)

    @fuzz(40)
    @given(POLICY_DOCS, st.sampled_from(["json", "yaml", "yaml-unicode"]), st.data())
    def put(doc: Any, form: str, data: st.DataObject) -> None:
        try:
            raw = dumps(doc, form)
        except (yaml.YAMLError, RecursionError, orjson.JSONEncodeError):
            return
        sent, headers = data.draw(encoded(raw))
        ctype = "application/json" if form == "json" else "application/yaml"
        send(svc, "PUT", "/v1/policy", content=sent, headers={"content-type": ctype, **headers})

    # YAML as text: anchors, aliases, tags, directives, flow and block in any order.
    @fuzz(30)
    @given(st.text(alphabet=YAML_ALPHABET, max_size=300) | YAML_FRAGMENTS)
    def put_text(text: str) -> None:
        body = text.encode("utf-8", "surrogatepass")
        send(svc, "PUT", "/v1/policy", content=body, headers={"content-type": "application/yaml"})

    put()
    put_text()
    restarts_and_loads(svc, before)


ACCOUNT_KEYS = [
    "domain",
    "name",
    "tier",
    "owner",
    "territory",
    "industry",
    "employees",
    "country",
    "annual_revenue",
]
ACCOUNT_ROW = st.dictionaries(st.sampled_from(ACCOUNT_KEYS), VALUES, max_size=6).map(
    lambda r: {"domain": "acme.com", **r}
)


def csv_of(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


CSV_CELL = st.text(max_size=30) | st.sampled_from(["acme.com", "tier_1", "1e308", "-1", '"', "\r"])


@fuzz(40)
@given(
    as_bodies(st.fixed_dictionaries({"accounts": st.lists(ACCOUNT_ROW, max_size=5)}) | VALUES)
    | st.lists(st.lists(CSV_CELL, max_size=6), max_size=6)
    .map(lambda rows: csv_of([ACCOUNT_KEYS[: max(len(r), 1)] for r in rows[:1]] + rows))
    .flatmap(lambda b: encoded(b).map(lambda e: (b"csv", *e)))
)
def test_generated_accounts(svc: Hostile, body: tuple[bytes, bytes, dict[str, str]]) -> None:
    signed, sent, headers = body
    ctype = "text/csv" if signed == b"csv" else "application/json"
    send(svc, "PUT", "/v1/accounts", content=sent, headers={"content-type": ctype, **headers})
