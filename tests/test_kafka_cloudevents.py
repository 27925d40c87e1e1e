"""CloudEvents on the events topic: produced with the CloudEvents SDK's own Kafka binding
(binary and structured mode) and with hand-set headers, read by the real consumer against
a real broker; the attributes stand in for the native fields, poison keeps its headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from cloudevents.core.bindings.kafka import KafkaMessage, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import select

from app.clock import FakeClock
from app.config import Settings
from app.db.tables import events
from app.events import Event, EventStatus
from app.ingest.cloudevents import Poison, content_mode, signal_for_type
from app.ingest.kafka import KafkaIngest
from app.policy.defaults import default_policy_raw
from app.policy.schema import CompiledPolicy, parse_policy
from app.policy.store import validate_or_raise
from tests.support.domain import policy_with
from tests.support.harness import Service, eventually, service
from tests.support.kafka import dead_letters

FORMAT = JSONFormat()
POLICY = CompiledPolicy(1, validate_or_raise(default_policy_raw()))
DAY = 86400.0


def binary(attributes: dict[str, Any], data: Any) -> KafkaMessage:
    return to_binary(CloudEvent(attributes, data), FORMAT)


def structured(attributes: dict[str, Any], data: Any) -> KafkaMessage:
    return to_structured(CloudEvent(attributes, data), FORMAT)


async def produce(producer: AIOKafkaProducer, topic: str, message: KafkaMessage, key: bytes) -> Any:
    """A KafkaMessage as the SDK means it to be sent: its headers, its value."""
    return await producer.send_and_wait(
        topic, message.value, key=key, headers=list(message.headers.items())
    )


async def lead(svc: Service, lead_id: str, signals: int) -> dict[str, Any]:
    async def scored() -> dict[str, Any] | None:
        r = await svc.client.get(f"/v1/leads/{lead_id}")
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body if len(body["intent_breakdown"]) == signals else None

    found: dict[str, Any] = await eventually(scored)
    return found


async def stored(svc: Service, event_ids: list[str]) -> dict[str, Any]:
    async with svc.runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(
                events.c.event_id,
                events.c.type,
                events.c.occurred_at,
                events.c.source,
                events.c.payload,
            ).where(events.c.event_id.in_(event_ids))
        )
        return {r.event_id: r for r in rows}


def decayed(points: float, half_life_days: float, age: float) -> float:
    return points * 2 ** (-age / (half_life_days * DAY))


async def test_cloudevents_in_both_modes_score_with_their_attributes_as_the_event(
    kafka_settings: Settings, clock: FakeClock, producer: AIOKafkaProducer, topic: str
) -> None:
    t = clock.now()
    viewed = datetime.fromtimestamp(t - 3600, UTC)
    demo = datetime.fromtimestamp(t - 2 * DAY, UTC)
    pricing = {
        "type": "com.acme.web.pricing_page_view",
        "source": "/website/pricing",
        "id": "ce-bin-1",
        "time": viewed,
    }
    demo_attrs = {
        "type": "demo_request",
        "source": "https://acme.com/app",
        "id": "ce-str-1",
        "time": demo,
        "datacontenttype": "application/json",
    }
    demo_data = {"lead": {"email": "ana@ce-acme.io", "title": "VP Sales"}, "properties": {"x": 1}}
    as_binary = binary(dict(pricing), {"lead": {"email": "Ana@CE-acme.io"}})
    as_structured = structured(dict(demo_attrs), demo_data)
    # Hand-set headers, no time: it happened when the record was received.
    visit = KafkaMessage(
        headers={
            "ce_specversion": b"1.0",
            "ce_id": b"ce-raw-1",
            "ce_source": b"/website",
            "ce_type": b"site_visit",
            "content-type": b"application/json; charset=utf-8",
        },
        key=None,
        value=orjson.dumps({"lead": {"email": "bo@ce-beta.io"}}),
    )
    # Structured without its content-type header: the JSON's specversion tells.
    download = {
        "specversion": "1.0",
        "id": "ce-raw-2",
        "source": "/crm",
        "type": "com.acme.content_download",
        "time": demo.isoformat(),
        "data": {"lead": {"email": "bo@ce-beta.io"}},
    }
    async with service(kafka_settings, clock) as svc:
        key = b"ce-acme.io"
        await produce(producer, topic, as_binary, key)
        await produce(producer, topic, as_structured, key)
        # the same two again, the first in the other mode: the ce id is the event id
        await produce(
            producer, topic, structured(dict(pricing), {"lead": {"email": "ana@ce-acme.io"}}), key
        )
        await produce(producer, topic, as_structured, key)
        sent_visit = await produce(producer, topic, visit, b"ce-beta.io")
        await producer.send_and_wait(topic, orjson.dumps(download), key=b"ce-beta.io")

        ana = await lead(svc, "ana@ce-acme.io", 2)
        expected = decayed(15, 7, 3600) + decayed(20, 14, 2 * DAY)
        assert abs(ana["score"]["intent"] - expected) < 1e-3  # each counted once
        assert {s["signal"] for s in ana["intent_breakdown"]} == {
            "pricing_page_view",
            "demo_request",
        }
        assert ana["attributes"]["title"] == "VP Sales"
        bo = await lead(svc, "bo@ce-beta.io", 2)
        assert {s["signal"] for s in bo["intent_breakdown"]} == {"site_visit", "content_download"}

        rows = await stored(svc, ["ce-bin-1", "ce-str-1", "ce-raw-1", "ce-raw-2"])
        assert set(rows) == {"ce-bin-1", "ce-str-1", "ce-raw-1", "ce-raw-2"}
        b, s, v, d = rows["ce-bin-1"], rows["ce-str-1"], rows["ce-raw-1"], rows["ce-raw-2"]
        assert (b.type, b.source, b.occurred_at) == (
            "pricing_page_view",
            "/website/pricing",
            viewed.timestamp(),
        )
        assert (s.type, s.source, s.occurred_at) == (
            "demo_request",
            "https://acme.com/app",
            demo.timestamp(),
        )
        assert (v.type, v.source) == ("site_visit", "/website")
        assert v.occurred_at == sent_visit.timestamp / 1000
        assert (d.type, d.source, d.occurred_at) == ("content_download", "/crm", demo.timestamp())
        # What came in, in structured form: attributes and data.
        assert orjson.loads(b.payload) == {
            "specversion": "1.0",
            "id": "ce-bin-1",
            "source": "/website/pricing",
            "type": "com.acme.web.pricing_page_view",
            "time": viewed.isoformat().replace("+00:00", "Z"),
            "data": {"lead": {"email": "Ana@CE-acme.io"}},
        }
        assert orjson.loads(s.payload) == orjson.loads(as_structured.value)
        assert orjson.loads(s.payload)["data"] == demo_data
        assert "time" not in orjson.loads(v.payload)  # none was sent
        assert orjson.loads(d.payload) == download


async def test_poison_cloudevents_are_dead_lettered_with_their_own_headers_kept(
    kafka_settings: Settings,
    clock: FakeClock,
    producer: AIOKafkaProducer,
    topic: str,
    bootstrap: str,
) -> None:
    t = datetime.fromtimestamp(clock.now(), UTC)
    attrs = {"source": "/website", "id": "p-1", "type": "site_visit", "time": t}
    who = {"lead": {"email": "cy@ce-gamma.io"}}
    raw_headers = {
        "ce_specversion": b"0.3",
        "ce_id": b"p-2",
        "ce_source": b"/website",
        "ce_type": b"site_visit",
        "traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    poison: list[tuple[KafkaMessage, str, str]] = [
        (KafkaMessage(raw_headers, None, orjson.dumps(who)), "version", "specversion"),
        (binary({**attrs, "id": "p-3"}, {"properties": {"plan": "pro"}}), "validate", "lead"),
        (structured({**attrs, "id": "p-4", "type": "com.acme.teleport"}, who), "policy", "type"),
        (
            binary({**attrs, "id": "p-5", "datacontenttype": "text/plain"}, "hello"),
            "decode",
            "datacontenttype",
        ),
        (
            KafkaMessage(
                {k: v for k, v in raw_headers.items() if k != "ce_id"} | {"ce_specversion": b"1.0"},
                None,
                orjson.dumps(who),
            ),
            "validate",
            "id",
        ),
        (
            KafkaMessage(
                {"content-type": b"application/cloudevents+json"},
                None,
                orjson.dumps(
                    {"specversion": "2.0", "id": "p-6", "source": "/w", "type": "site_visit"}
                    | {"data": who}
                ),
            ),
            "version",
            "specversion",
        ),
    ]
    key = b"ce-gamma.io"  # one partition: what follows the poison must still flow
    async with service(kafka_settings, clock) as svc:
        sent = [await produce(producer, topic, m, key) for m, _, _ in poison]
        await produce(producer, topic, binary({**attrs, "id": "ok-1"}, who), key)
        cy = await lead_of(svc, "cy@ce-gamma.io")
        assert [s["signal"] for s in cy["intent_breakdown"]] == ["site_visit"]

        dlq = await dead_letters(bootstrap, topic, len(poison))
        assert len(dlq) == len(poison)
        for rec, (message, stage, field), meta in zip(dlq, poison, sent, strict=True):
            original = list(message.headers.items())
            assert rec.value == message.value
            assert rec.key == key
            assert list(rec.headers[: len(original)]) == original  # every header as it came
            ours = dict(rec.headers[len(original) :])
            assert ours["error-stage"].decode() == stage
            assert ours["error-field"].decode() == field
            assert ours["error"]
            assert ours["original-topic"].decode() == topic
            assert int(ours["original-offset"]) == meta.offset
        assert "traceparent" not in dict(dlq[1].headers)  # only what was sent
        assert dict(dlq[0].headers)["traceparent"] == raw_headers["traceparent"]


async def lead_of(svc: Service, lead_id: str) -> dict[str, Any]:
    return await lead(svc, lead_id, 1)


# The same consumer code without a broker: records as aiokafka hands them over.


def record(
    message: KafkaMessage, timestamp_ms: int = 1_700_000_000_000
) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=None,
        value=message.value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(message.value),
        headers=list(message.headers.items()),
    )


def decode(message: KafkaMessage) -> Event:
    async def unused(batch: list[Event]) -> list[EventStatus]:
        raise AssertionError("only decoding is under test")

    ingest = KafkaIngest(
        unused,
        policy=lambda: POLICY,
        clock=FakeClock(1_700_000_000.0),
        bootstrap="unused",
        topic="t",
        group="g",
    )
    rec = record(message)
    return ingest._decode(rec, dict(rec.headers), POLICY, 1_700_000_000.0)


def refused(message: KafkaMessage) -> tuple[str, str | None, str]:
    with pytest.raises(Poison) as caught:
        decode(message)
    return caught.value.stage, caught.value.field, caught.value.message


WHEN = datetime.fromtimestamp(1_699_999_000.0, UTC)
ATTRS = {"source": "/web", "id": "u-1", "type": "pricing_page_view", "time": WHEN}
LEAD = {"lead": {"email": "dee@ce-delta.io"}}


def test_the_content_type_header_decides_structured_mode_before_ce_headers() -> None:
    """The binding's rule: a content-type of application/cloudevents… is structured mode,
    whatever other headers ride along; ce_ headers otherwise mean binary."""
    message = structured(dict(ATTRS), LEAD)
    with_stray = KafkaMessage({**message.headers, "ce_id": b"stray"}, None, message.value)
    assert content_mode(with_stray.headers) == "structured"
    assert decode(with_stray).event_id == "u-1"
    assert content_mode(binary(dict(ATTRS), LEAD).headers) == "binary"
    assert content_mode({"received-at": b"1.0"}) is None


def test_the_data_of_a_wrapped_native_event_keeps_its_fields_but_not_its_id() -> None:
    native = {
        "event_id": "native-1",
        "type": "demo_request",
        "occurred_at": "2023-11-14T20:00:00Z",
        "source": "crm",
        **LEAD,
    }
    ev = decode(binary({**ATTRS, "type": "com.acme.anything"}, native))
    assert (ev.event_id, ev.type, ev.source) == ("u-1", "demo_request", "crm")
    assert ev.occurred_at == datetime(2023, 11, 14, 20, tzinfo=UTC).timestamp()


def test_a_cloudevent_without_time_happened_when_the_record_was_received() -> None:
    message = binary({k: v for k, v in ATTRS.items() if k != "time"}, LEAD)
    # the SDK's constructor fills in a time; a producer writing headers by hand need not
    headers = {k: v for k, v in message.headers.items() if k != "ce_time"}
    ev = decode(KafkaMessage(headers, None, message.value))
    assert ev.occurred_at == 1_700_000_000.0
    assert "time" not in orjson.loads(ev.payload())


def test_a_source_is_the_uri_reference_as_given_up_to_200_characters() -> None:
    url = "https://acme.com/" + "a" * 183
    assert decode(binary({**ATTRS, "source": url}, LEAD)).source == url
    stage, field, _ = refused(binary({**ATTRS, "source": url + "b"}, LEAD))
    assert (stage, field) == ("validate", "source")


@pytest.mark.parametrize(
    ("ce_type", "signal"),
    [
        ("pricing_page_view", "pricing_page_view"),
        ("com.acme.demo_request", "demo_request"),
        ("io.example.web.site_visit", "site_visit"),
        ("identify", "identify"),
        ("com.acme.identify", "identify"),
    ],
)
def test_a_cloudevents_type_maps_to_a_signal_of_the_policy(ce_type: str, signal: str) -> None:
    assert signal_for_type(ce_type, POLICY) == signal
    assert decode(binary({**ATTRS, "type": ce_type}, LEAD)).type == signal


@pytest.mark.parametrize("ce_type", ["com.acme.pricing.viewed", "teleport", "demo_request.com"])
def test_a_cloudevents_type_that_names_no_signal_is_refused_by_the_policy(ce_type: str) -> None:
    stage, field, message = refused(binary({**ATTRS, "type": ce_type}, LEAD))
    assert (stage, field) == ("policy", "type")
    assert ce_type in message


@pytest.mark.parametrize(
    ("message", "stage", "field"),
    [
        (
            KafkaMessage(
                {
                    "ce_specversion": b"1.0",
                    "ce_id": b"x",
                    "ce_source": b"/w",
                    "ce_type": b"site_visit",
                    "ce_time": b"yesterday",
                },
                None,
                orjson.dumps(LEAD),
            ),
            "validate",
            "time",
        ),
        (
            KafkaMessage(
                {"ce_id": b"x", "ce_source": b"/w", "ce_type": b"site_visit"},
                None,
                orjson.dumps(LEAD),
            ),
            "validate",
            "specversion",
        ),
        (
            KafkaMessage(
                {
                    "ce_specversion": b"1.0",
                    "ce_id": b"x",
                    "ce_source": b"/w",
                    "ce_type": b"site_visit",
                },
                None,
                b'{"lead": ',
            ),
            "decode",
            "data",
        ),
        (
            KafkaMessage({"content-type": b"application/cloudevents+avro"}, None, b"\x00\x01"),
            "decode",
            "content-type",
        ),
        (binary(dict(ATTRS), None), "validate", "data"),
        (binary(dict(ATTRS), {"lead": {}}), "validate", "lead"),
        (binary(dict(ATTRS), {"lead": {"email": "not-an-email"}}), "validate", "lead.email"),
        (
            KafkaMessage(  # a time without its offset, which the spec requires
                {"content-type": b"application/cloudevents+json"},
                None,
                orjson.dumps(
                    {"specversion": "1.0", "id": "x", "source": "/w", "type": "site_visit"}
                    | {"time": "2023-11-14T20:00:00", "data": LEAD}
                ),
            ),
            "validate",
            "time",
        ),
    ],
)
def test_malformed_cloudevents_are_refused_with_stage_and_field(
    message: KafkaMessage, stage: str, field: str
) -> None:
    assert refused(message)[:2] == (stage, field)


def test_the_policy_maps_a_producers_own_cloudevents_types() -> None:
    def mapping(raw: dict[str, Any]) -> None:
        raw["cloudevents"] = {"types": {"com.acme.pricing.viewed": "pricing_page_view"}}

    policy = policy_with(mapping)
    assert signal_for_type("com.acme.pricing.viewed", policy) == "pricing_page_view"
    assert signal_for_type("com.acme.demo_request", policy) == "demo_request"  # still by name
    raw = default_policy_raw()
    raw["cloudevents"] = {"types": {"com.acme.x": "teleport"}}
    doc, errors = parse_policy(raw)
    assert doc is None and [e.path for e in errors] == ["cloudevents.types.com.acme.x"]
