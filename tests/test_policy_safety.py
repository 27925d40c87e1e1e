"""A policy can never be stored that the service cannot load, and a stored one it cannot
load never stops it: the reproductions of issue 13 against the real service (SQLite and
PostgreSQL), the bounded loader itself, and generated YAML and JSON shapes."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from app.clock import FakeClock
from app.config import Settings
from app.db import policies
from app.errors import AppError, InvalidInput, MalformedBody
from app.policy.bounded import MAX_ALIAS_NODES, MAX_DEPTH, check_shape, load_json, load_yaml
from app.policy.conditions import Condition, compile_condition
from app.policy.defaults import default_policy_raw, default_policy_text
from app.policy.schema import parse_policy
from app.policy.store import load_document
from tests.support.harness import Service, event, eventually, service
from tests.support.memory import rss_peak

MB = 1024 * 1024
RSS_BOUND = 100 * MB


# -- helpers --------------------------------------------------------------------------------


TARGET = "{field: account.industry, in: [software, internet, financial_services, healthcare]}"


def laughs_policy(levels: int, width: int = 9) -> str:
    """The reproduction: the default policy with one condition's ``eq:`` value replaced by
    a billion-laughs list, anchors nested ``levels`` deep (each level ``width`` aliases of
    the one below)."""
    chain = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        chain.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    text = default_policy_text()
    assert TARGET in text
    return text.replace(TARGET, "{field: account.industry, eq: [" + ", ".join(chain) + "]}", 1)


async def put_yaml(svc: Service, text: str | bytes, **params: str) -> Any:
    body = text.encode() if isinstance(text, str) else text
    return await svc.client.put(
        "/v1/policy", content=body, headers={"content-type": "application/yaml"}, params=params
    )


async def versions(svc: Service) -> list[int]:
    r = await svc.client.get("/v1/policy/versions")
    assert r.status_code == 200, r.text
    return [v["version"] for v in r.json()["versions"]]


def error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:2000]
    body: dict[str, Any] = r.json()
    if code is not None:
        assert body["code"] == code, body
    return body


async def current(svc: Service) -> dict[str, Any]:
    r = await svc.client.get("/v1/policy")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()["policy"]
    return doc


# -- the bounded loader -------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [5, 7, 8, 12])
def test_billion_laughs_is_refused_while_composing(levels: int) -> None:
    with rss_peak() as peak, pytest.raises(InvalidInput) as refused:
        load_yaml(laughs_policy(levels))
    assert (refused.value.code, refused.value.field) == ("yaml_alias_limit", "body")
    assert str(MAX_ALIAS_NODES) in refused.value.message
    assert peak[0] < RSS_BOUND


def test_a_few_aliases_are_fine() -> None:
    text = "a: &x {field: lead.title, eq: vp}\nb: [*x, *x, *x]\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml(default_policy_text()) == yaml.safe_load(default_policy_text())


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        load_yaml("a: &x [1, *x]\n")
    assert refused.value.code == "yaml_alias_limit"


def test_a_large_string_aliased_is_too_large_once_expanded() -> None:
    big = "x" * (300 * 1024)
    with pytest.raises(InvalidInput) as refused:
        load_yaml(f"a: &s {big}\nb: [*s, *s, *s, *s]\n")
    assert refused.value.code == "document_too_large"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5000])
def test_deep_yaml_is_too_deep_not_a_recursion_error(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, "".join(f"{' ' * i}a:\n" for i in range(depth))):
        with pytest.raises(InvalidInput) as refused:
            load_yaml(text)
        assert (refused.value.code, refused.value.field) == ("too_deep", "body")
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 1000])
def test_deep_json_is_too_deep(depth: int) -> None:
    with pytest.raises(InvalidInput) as refused:
        load_json("[" * depth + "]" * depth)
    assert refused.value.code == "too_deep"


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ('a: ["\\ud800"]', None, None),  # libyaml refuses the escape; PyYAML's reader keeps it
        ("a: 2026-02-30", None, None),  # the constructor's datetime() raises ValueError
        ("a: 1" + "0" * 5000, None, None),  # int() past Python's 4,300 digits
        ("a: !!float x", None, None),
        ("a: 2026-01-01", "invalid_value", "a"),
        ("a: [.nan]", "number_out_of_range", "a[0]"),
        ("a: 99999999999999999999", "number_out_of_range", "a"),
        ("{1: 2}", "invalid_key", "body"),
        ("a: !!binary aGk=", "invalid_value", "a"),
        ("a: !!set {x}", "invalid_value", "a"),
        ("a: !!python/object:os.system x", None, None),
    ],
)
def test_what_json_cannot_store_is_a_4xx(text: str, code: str | None, field: str | None) -> None:
    with pytest.raises(AppError) as refused:
        load_yaml(text)
    if code is None:
        assert isinstance(refused.value, MalformedBody)
        assert refused.value.code == "malformed_yaml"
    else:
        assert (refused.value.code, refused.value.field) == (code, field)


def test_a_lone_surrogate_is_refused_naming_its_path() -> None:
    """What PyYAML's own reader yields for ``"\\ud800"`` (and Python's json module)."""
    with pytest.raises(InvalidInput) as refused:
        check_shape({"lists": {"competitors": ["ok.com", "\ud800"]}})
    assert (refused.value.code, refused.value.field) == ("invalid_string", "lists.competitors[1]")


YAML_SCALARS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
YAML_DOCS = st.recursive(
    YAML_SCALARS,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=YAML_DOCS, depth=st.integers(0, 80))
def test_generated_yaml_is_loaded_or_refused_never_crashes(doc: Any, depth: int) -> None:
    for _ in range(depth):
        doc = [doc]
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        data = load_yaml(text)
    except AppError as exc:
        assert exc.status in (400, 422), exc
        return
    # Whatever loads is JSON that dumps and reads back unchanged.
    assert orjson.loads(orjson.dumps(data)) == data


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="[]{}:,&*!-? \n\"'abc01.~|>#%@`\\", max_size=200))
def test_generated_yaml_text_is_loaded_or_refused(text: str) -> None:
    try:
        load_yaml(text)
    except AppError as exc:
        assert exc.status in (400, 422)


# -- conditions: one value, never a list or a mapping ---------------------------------------------


def test_a_list_valued_field_is_in_no_set() -> None:
    """A lead's field holding a list (an event's traits) does not crash ``in``/``in_list``."""
    cond = Condition.model_validate({"field": "lead.tags", "in": ["vip"]})
    pred = compile_condition(cond, {})
    assert pred({"lead": {"tags": ["vip"]}}) is False
    assert pred({"lead": {"tags": "VIP"}}) is True
    listed = compile_condition(
        Condition.model_validate({"field": "lead.tags", "in_list": "x"}), {"x": frozenset({"a"})}
    )
    assert listed({"lead": {"tags": {"a": 1}}}) is False


# -- the reproductions over HTTP -----------------------------------------------------------


async def test_the_8_deep_billion_laughs_is_refused_quickly_and_nothing_is_stored(
    svc: Service,
) -> None:
    """Before: 500 after 28 s, the 622 MB document committed, every restart out of memory."""
    text = laughs_policy(8)
    assert 3000 < len(text.encode()) < 4500  # the reproduction's size (3.6 KB)
    with rss_peak() as peak:
        r = await put_yaml(svc, text)
    err = error(r, 422, "yaml_alias_limit")
    assert err["field"] == "body"
    assert peak[0] < RSS_BOUND, peak[0]
    assert await versions(svc) == [1]
    # Also as a dry run.
    error(await put_yaml(svc, text, dry_run="true"), 422, "yaml_alias_limit")


async def test_the_7_deep_billion_laughs_is_refused_too(svc: Service) -> None:
    """Before: 200, and a 62 MB document stored."""
    with rss_peak() as peak:
        r = await put_yaml(svc, laughs_policy(7))
    assert r.status_code == 422, r.text
    assert r.json()["code"] in ("yaml_alias_limit", "document_too_large")
    assert peak[0] < RSS_BOUND, peak[0]
    assert await versions(svc) == [1]


@pytest.mark.parametrize("depth", [500, 2000])
async def test_yaml_nested_500_levels_is_422(svc: Service, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    text = default_policy_text().replace(TARGET, "{field: account.industry, eq: " + nested + "}")
    err = error(await put_yaml(svc, text), 422, "too_deep")
    assert err["field"] == "body"
    block_depth = min(depth, 500)  # deeper, its indentation alone is over 1 MiB
    block = "".join(f"{' ' * i}k{i}:\n" for i in range(block_depth)) + " " * block_depth + "v\n"
    error(await put_yaml(svc, block), 422, "too_deep")
    assert await versions(svc) == [1]


async def test_json_nested_deep_is_422_or_400(svc: Service) -> None:
    doc = await current(svc)
    nested: Any = "software"
    for _ in range(200):
        nested = [nested]
    doc["fit"]["rules"][0]["when"] = {"field": "account.industry", "in": nested}
    error(await svc.client.put("/v1/policy", json=doc), 422, "too_deep")
    body = b"[" * 1100 + b"]" * 1100  # past orjson's own limit
    r = await svc.client.put(
        "/v1/policy", content=body, headers={"content-type": "application/json"}
    )
    error(r, 400, "malformed_json")
    assert await versions(svc) == [1]


@pytest.mark.parametrize("value", [[["software"]], [{"a": 1}], [[]]])
async def test_in_with_a_list_or_mapping_is_422_naming_the_field(svc: Service, value: Any) -> None:
    """Before: 500 (an unhashable value in the compiled set)."""
    doc = await current(svc)
    doc["fit"]["rules"][0]["when"] = {"field": "account.industry", "in": value}
    err = error(await svc.client.put("/v1/policy", json=doc), 422, "policy_invalid")
    assert err["field"] == "fit.rules[0].when.in[0]", err
    assert "single value" in err["message"]
    r = await svc.client.put("/v1/policy", json=doc, params={"dry_run": "true"})
    error(r, 422, "policy_invalid")
    assert await versions(svc) == [1]


async def test_eq_with_a_list_is_422(svc: Service) -> None:
    doc = await current(svc)
    doc["fit"]["rules"][0]["when"] = {"field": "account.industry", "eq": ["lol"] * 9}
    err = error(await svc.client.put("/v1/policy", json=doc), 422, "policy_invalid")
    assert err["field"] == "fit.rules[0].when.eq"


async def test_a_lone_surrogate_is_a_4xx_and_nothing_stored(svc: Service) -> None:
    """Before: 500 (orjson refused to write the document). The JSON escape is refused by
    orjson as it parses (400), the YAML one by libyaml (400) or the shape check (422)."""
    doc = await current(svc)
    doc["lists"]["competitors"] = ["rival.io", "@@SURROGATE@@"]
    body = orjson.dumps(doc).replace(b"@@SURROGATE@@", b"\\ud800")
    r = await svc.client.put(
        "/v1/policy", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "malformed_json", r.text
    text = (
        yaml.safe_dump(doc)
        .replace("'@@SURROGATE@@'", '"\\ud800"')
        .replace("@@SURROGATE@@", '"\\ud800"')
    )
    assert "\\ud800" in text
    r = await put_yaml(svc, text)
    assert r.status_code in (400, 422), r.text
    assert r.json()["code"] in ("malformed_yaml", "invalid_string")
    assert await versions(svc) == [1]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["signals", "demo_request", "half_life"], "1ms", "signals.demo_request.half_life"),
        (["signals", "demo_request", "half_life"], "59s", "signals.demo_request.half_life"),
        (["signals", "demo_request", "half_life"], "600w", "signals.demo_request.half_life"),
        (["signals", "demo_request", "points"], 1e308, "signals.demo_request.points"),
        (["signals", "demo_request", "points"], -1001, "signals.demo_request.points"),
        (["fit", "rules", 0, "points"], 5000, "fit.rules[0].points"),
        (["scoring", "fit_max"], 1e9, "scoring.fit_max"),
        (["scoring", "intent_max"], 101, "scoring.intent_max"),
        (["scoring", "bands", 0, "min"], 101, "scoring.bands[0].min"),
        (["routing", "cooldown"], "1s", "routing.cooldown"),
        (["routing", "cooldown"], "2000d", "routing.cooldown"),
        (["routing", "surge", "window"], 1, "routing.surge.window"),
        (["routing", "surge", "active_lead_intent"], 1e6, "routing.surge.active_lead_intent"),
    ],
)
async def test_numbers_out_of_bounds_are_422(
    svc: Service, path: list[Any], value: Any, field: str
) -> None:
    doc = await current(svc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    err = error(await svc.client.put("/v1/policy", json=doc), 422, "policy_invalid")
    assert err["field"] == field, err
    assert await versions(svc) == [1]


async def test_the_extremes_accepted_never_overflow(svc: Service, clock: FakeClock) -> None:
    """Before: ``half_life: 1ms`` and points 1e308 were accepted, then an event 120 s ahead
    failed with a numeric overflow. At the bounds (±1,000 points, a minute's half-life) an
    event at the edge of the clock tolerance weighs 2⁵ × its points, a finite number."""
    doc = await current(svc)
    doc["signals"]["demo_request"] = {"points": 1000, "half_life": "1m"}
    doc["signals"]["careers_page_view"] = {"points": -1000, "half_life": 60}
    r = await svc.client.put("/v1/policy", json=doc)
    assert r.status_code == 200, r.text
    for i, ahead in enumerate((120, 299)):
        ev = event(f"ahead-{i}", "demo_request", clock.now() + ahead, email="max@acme.com")
        r = await svc.client.post("/v1/events", json=ev)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1, r.text
    ev = event("careers", "careers_page_view", clock.now() + 120, email="min@acme.com")
    assert (await svc.client.post("/v1/events", json=ev)).status_code == 202

    async def scored(lead_id: str) -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/leads/{lead_id}")
        return r.json() if r.status_code == 200 else None

    for lead_id in ("max@acme.com", "min@acme.com"):
        lead = await eventually(lambda lead_id=lead_id: scored(lead_id))
        assert all(math.isfinite(v) for v in lead["score"].values() if isinstance(v, float))


async def test_every_accepted_policy_loads_again(svc: Service) -> None:
    """What PUT stores is what a start-up reads: the stored document compiles to the same
    policy as the one put in force."""
    doc = await current(svc)
    doc["fit"]["rules"][0]["when"] = {"field": "account.industry", "in": ["software", 1, True]}
    r = await svc.client.put("/v1/policy", json=doc)
    assert r.status_code == 200, r.text
    async with svc.runtime.sessionmaker() as session:
        stored = await session.scalar(
            policies.select().with_only_columns(policies.c.document).where(policies.c.version == 2)
        )
    loaded = load_document(2, stored)
    assert loaded.doc == svc.runtime.policy.doc  # type: ignore[union-attr]


# -- start-up survives a stored policy it cannot load --------------------------------------


def _expanded_laughs(levels: int) -> str:
    """What the old service stored for the 7-deep reproduction: the document expanded."""
    doc = default_policy_raw()
    value: Any = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    doc["fit"]["rules"][0]["when"] = {"field": "account.industry", "eq": value}
    return orjson.dumps(doc).decode()


def _old_release_doc() -> str:
    """Valid for the release that stored it, not for this one: a 1 ms half-life."""
    doc = default_policy_raw()
    doc["signals"]["demo_request"]["half_life"] = 0.001
    return orjson.dumps(doc).decode()


async def _insert(svc: Service, version: int, document: str, source: str | None = None) -> None:
    async with svc.runtime.sessionmaker() as session, session.begin():
        await session.execute(
            policies.insert().values(
                version=version,
                document=document,
                source_text=source,
                created_at=0.0,
                created_by="by hand",
                status="active",
            )
        )


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about_policy(self) -> list[logging.LogRecord]:
        return [r for r in self.records if "policy version" in r.getMessage()]


@contextmanager
def log_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("app.runtime.service")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _metric(svc: Service, name: str) -> float:
    text = (await svc.client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_restart_after_unloadable_stored_versions_falls_back(
    settings: Settings, clock: FakeClock
) -> None:
    async with service(settings, clock) as svc:
        key = svc.admin_key
        good = await current(svc)
        good["signals"]["demo_request"]["points"] = 21
        assert (await svc.client.put("/v1/policy", json=good)).status_code == 200  # version 2
        # What an older release (or a hand) could leave in the table.
        # The 5-deep reproduction as the old service stored it, expanded: 3.2 MB. (SQLite
        # reads a skipped row's pages into its page cache, bounded by cache_size, when it
        # looks at the status stored after the document; its size is read off the row.)
        await _insert(svc, 3, _expanded_laughs(5), source=laughs_policy(5))
        await _insert(svc, 4, "{oops")
        await _insert(svc, 5, _old_release_doc())
        await _insert(svc, 6, orjson.dumps({"scoring": 1}).decode())
        await _insert(svc, 7, "[" * 5000 + "]" * 5000)

    with log_lines() as logs, rss_peak() as peak:
        async with service(settings, clock, key=key) as svc:
            ready = await svc.client.get("/readyz")
            assert ready.status_code == 200, ready.text
            checks = ready.json()["checks"]
            assert checks["policy_version"] == 2
            skipped = {s["version"]: s["reason"] for s in checks["policy"]["skipped"]}
            assert sorted(skipped) == [3, 4, 5, 6, 7]
            assert "over 1048576 bytes" in skipped[3]  # its length read, not the document
            assert "malformed_json" in skipped[4]
            assert "signals.demo_request.half_life" in skipped[5]
            assert "depth limit exceeded" in skipped[7]  # orjson's own, at 1,024
            assert await _metric(svc, "intent_policy_unloadable_versions") == 5
            assert await _metric(svc, "intent_policy_active_version") == 2
            # The running policy is version 2's, and the API says which versions it skipped.
            assert svc.runtime.policy is not None
            assert svc.runtime.policy.signals["demo_request"].points == 21
            shown = await svc.client.get("/v1/policy")
            assert (shown.json()["version"], shown.json()["status"]) == (2, "active")
            listed = (await svc.client.get("/v1/policy/versions")).json()["versions"]
            assert {v["version"]: v["status"] for v in listed} == {
                7: "unloadable",
                6: "unloadable",
                5: "unloadable",
                4: "unloadable",
                3: "unloadable",
                2: "active",
                1: "superseded",
            }
            for version in (3, 4, 7):
                r = await svc.client.get("/v1/policy", params={"version": version})
                error(r, 409, "policy_unloadable")
            # Events are scored by version 2 meanwhile.
            ev = event("after", "demo_request", clock.now(), email="ann@acme.com")
            assert (await svc.client.post("/v1/events", json=ev)).status_code == 202

            # A new version put in force supersedes them all.
            r = await svc.client.put("/v1/policy", json=good)
            assert (r.status_code, r.json()["version"]) == (200, 8), r.text
            checks = (await svc.client.get("/readyz")).json()["checks"]
            assert (checks["policy_version"], checks["policy"]["skipped"]) == (8, [])
            assert await _metric(svc, "intent_policy_unloadable_versions") == 0
    assert peak[0] < RSS_BOUND, peak[0]
    # One line per skipped version, saying which and why, no traceback.
    lines = logs.about_policy()
    assert len(lines) == 5, [r.getMessage() for r in lines]
    assert all(r.levelno == logging.ERROR and not r.exc_info for r in lines)
    assert "policy version 7 cannot be loaded" in lines[0].getMessage()
    assert "version 2 is in force" in lines[0].getMessage()

    async with service(settings, clock, key=key) as svc:
        checks = (await svc.client.get("/readyz")).json()["checks"]
        assert (checks["policy_version"], checks["policy"]["skipped"]) == (8, [])


async def test_restart_with_no_loadable_version_stores_the_default(
    settings: Settings, clock: FakeClock
) -> None:
    async with service(settings, clock) as svc:
        key = svc.admin_key
        async with svc.runtime.sessionmaker() as session, session.begin():
            await session.execute(
                update(policies).where(policies.c.version == 1).values(document="{oops")
            )
    with log_lines() as logs:
        async with service(settings, clock, key=key) as svc:
            checks = (await svc.client.get("/readyz")).json()["checks"]
            # Version 2 is newer than the one that failed: nothing newer is skipped.
            assert (checks["policy_version"], checks["policy"]["skipped"]) == (2, [])
            assert await _metric(svc, "intent_policy_unloadable_versions") == 0
            shown = (await svc.client.get("/v1/policy")).json()
            assert shown["created_by"] == "default"
            assert "no stored version could be loaded" in shown["comment"]
            default, _ = parse_policy(default_policy_raw())
            assert default is not None
            assert shown["policy"] == default.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
    [line] = logs.about_policy()
    assert "policy version 1 cannot be loaded" in line.getMessage()
    assert "malformed_json" in line.getMessage() and "version 2 is in force" in line.getMessage()


async def test_a_running_service_skips_an_unloadable_version_another_wrote(
    svc: Service,
) -> None:
    """The policy refresh (another replica's or the CLI's versions) passes over one it
    cannot load, once, and keeps the version in force."""
    with log_lines() as logs:
        await _insert(svc, 2, _old_release_doc())

        async def skipped() -> Any:
            checks = (await svc.client.get("/readyz")).json()["checks"]
            return checks["policy"]["skipped"]

        assert [s["version"] for s in await eventually(skipped, within=30)] == [2]
        assert svc.runtime.policy is not None and svc.runtime.policy.version == 1
        await asyncio.sleep(6)  # a refresh later, not logged again
    assert len(logs.about_policy()) == 1
    r = await svc.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["policy_version"] == 1


async def test_cli_apply_refuses_the_billion_laughs(
    settings: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    path = tmp_path / "laughs.yaml"
    path.write_text(laughs_policy(8))
    monkeypatch.setenv("INTENT_DATABASE_URL", settings.database_url)
    result = CliRunner().invoke(cli, ["policy", "apply", str(path)])
    assert result.exit_code == 1
    assert "aliases expand to more than" in result.output
    result = CliRunner().invoke(cli, ["policy", "validate", str(path)])
    assert result.exit_code == 1
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 600 + "]" * 600)
    result = CliRunner().invoke(cli, ["policy", "validate", str(deep)])
    assert result.exit_code == 1 and "deeper than 64" in result.output


def test_bounds_hold_in_the_schema_alone() -> None:
    raw = copy.deepcopy(default_policy_raw())
    raw["signals"]["demo_request"]["half_life"] = "1ms"
    doc, errors = parse_policy(raw)
    assert doc is None
    assert [str(e) for e in errors] == [
        "signals.demo_request.half_life: a half-life must be at least 1 minute"
    ]
