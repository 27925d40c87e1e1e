"""CloudEvents on the events topic, read with the SDK's Kafka binding.

A record is a CloudEvent in *structured* mode when its ``content-type`` header starts with
``application/cloudevents`` (or, without that header, when its value is a JSON object with
a ``specversion``), and in *binary* mode when it has ``ce_`` headers: the Kafka binding's
rule, the content-type first. Only JSON is read: CloudEvents 1.0 in the format
``application/cloudevents+json``, with a JSON ``datacontenttype`` (the default).

The event is the CloudEvent's ``data``: a JSON object with our native fields, of which a
producer that follows the spec leaves out the four its attributes give.

- ``event_id`` is always the ``id``: the producer's key for the occurrence, so a record
  redelivered, or sent again in the other mode, counts once.
- ``occurred_at``: the data's, else ``time``, else the record's received time (``time``
  is optional in the spec).
- ``source``: the data's, else the ``source`` attribute as given, e.g. ``/website/pricing``
  or ``https://acme.com/app`` (a URI-reference; at most 200 characters, as every source).
- ``type``: the data's, else the CloudEvents ``type``: itself when it is a signal of the
  policy (or ``identify``), else the last dot-separated part of a reverse-DNS type when
  that is one (``com.acme.demo_request`` → ``demo_request``); any other is refused.

The lead stays required: the data must say who the event is about. The events table keeps
the CloudEvent in structured form: the value as received, or in binary mode the
attributes and data as the SDK writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as binding
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from app.events import ATTRIBUTE_ONLY_TYPES
from app.policy.schema import CompiledPolicy

Mode = Literal["binary", "structured"]
SPECVERSION = "1.0"
CONTENT_TYPE = "content-type"
_MEDIA_TYPE = b"application/cloudevents"
_JSON_FORMAT = b"application/cloudevents+json"
_FORMAT = JSONFormat()


class Poison(Exception):
    """A record that cannot become an event: it goes to the dead-letter topic, with the
    stage that refused it and the field at fault."""

    def __init__(self, stage: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.field = field


def content_mode(headers: Mapping[str, bytes | None]) -> Mode | None:
    """The record's CloudEvents mode from its headers alone; None for anything else (a
    native event, or a structured CloudEvent without its content-type, which only its
    JSON tells). Cheap: a native record has one or two headers."""
    binary = False
    for name, value in headers.items():
        low = name.lower()
        if low == CONTENT_TYPE:
            if value is not None and value[: len(_MEDIA_TYPE)].lower() == _MEDIA_TYPE:
                return "structured"
        elif low.startswith(binding.CE_PREFIX):
            binary = True
    return "binary" if binary else None


def read_cloudevent(
    value: bytes,
    headers: Mapping[str, bytes | None],
    mode: Mode,
    *,
    policy: CompiledPolicy,
    received_at: float,
) -> tuple[dict[str, Any], str]:
    """The native event dict a CloudEvent record stands for (see the module's rules), and
    the JSON the events table stores for it."""
    # Without the record key: it is Kafka's partitioning, not part of the event, and given
    # one the SDK adds a partitionkey attribute and from_structured builds the event again.
    message = binding.KafkaMessage(headers=_binding_headers(headers), key=None, value=value)
    try:
        if mode == "structured":
            _check_format(message.headers)
            ce = binding.from_structured(message, _FORMAT, _Received)
        else:
            ce = binding.from_binary(message, _FORMAT, _Received)
    except CloudEventValidationError as exc:
        field, errors = next(iter(exc.errors.items()))
        raise Poison("validate", f"{field}: " + "; ".join(map(str, errors)), field) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(exc, message, mode) from None
    event = dict(_data(ce, value, mode))
    event["event_id"] = ce.get_id()
    if "occurred_at" not in event:
        time = ce.get_time()
        event["occurred_at"] = (
            time if time is not None else datetime.fromtimestamp(received_at, UTC)
        )
    if "source" not in event:
        event["source"] = ce.get_source()
    if "type" not in event:
        event["type"] = signal_for_type(ce.get_type(), policy)
    stored = value.decode() if mode == "structured" else _FORMAT.write(ce).decode()
    return event, stored


def stored_cloudevent(value: bytes) -> dict[str, Any]:
    """The native event dict of a CloudEvent as the events table keeps it (structured),
    for a replay: its data and id. Its type, source and time are the events row's (the
    type as the policy of the time mapped it)."""
    message = binding.KafkaMessage(headers={}, key=None, value=value)
    ce = binding.from_structured(message, _FORMAT, _Received)
    event = dict(_data(ce, value, "structured"))
    event["event_id"] = ce.get_id()
    return event


def signal_for_type(ce_type: str, policy: CompiledPolicy) -> str:
    """Our event type for a CloudEvents ``type``: the policy's ``cloudevents.types``
    mapping, else the type itself or the last part of a reverse-DNS name, whichever is a
    signal of the policy (or ``identify``)."""
    mapped = policy.signal_for_cloudevents_type(ce_type)
    if mapped is not None:
        return mapped
    for candidate in (ce_type, ce_type.rpartition(".")[2]):
        if candidate in policy.signals or candidate in ATTRIBUTE_ONLY_TYPES:
            return candidate
    raise Poison(
        "policy",
        f'type: the CloudEvents type "{ce_type}" names no signal of policy version '
        f"{policy.version}; map it in the policy's cloudevents.types, or use the signal's "
        "name or a reverse-DNS type ending in it "
        '(e.g. "com.example.pricing_page_view")',
        "type",
    )


class _Received(CloudEvent):
    """The SDK's v1.0 event, refusing what its constructor would otherwise make up: a new
    uuid for a missing ``id`` (each redelivery a new event), ``1.0`` for a missing
    ``specversion``. A missing ``time`` stays missing: the constructor's "now" is not
    when the event happened."""

    def __init__(
        self, attributes: dict[str, Any], data: dict[str, Any] | str | bytes | None = None
    ) -> None:
        version = attributes.get("specversion")
        if version is None:
            raise Poison("validate", "the CloudEvent has no specversion", "specversion")
        if version != SPECVERSION:
            raise Poison(
                "version",
                f'unsupported CloudEvents specversion "{version}" (1.0 is read)',
                "specversion",
            )
        if "id" not in attributes:
            raise Poison("validate", "the CloudEvent has no id", "id")
        timed = "time" in attributes
        super().__init__(attributes, data)
        if not timed:
            self.get_attributes().pop("time", None)


def _binding_headers(headers: Mapping[str, bytes | None]) -> dict[str, bytes]:
    """The headers the binding reads (``ce_*`` and ``content-type``), names in lower case
    as the SDK compares them; the SDK decodes every header it is given, so no others."""
    return {
        low: value
        for name, value in headers.items()
        if value is not None
        and ((low := name.lower()) == CONTENT_TYPE or low.startswith(binding.CE_PREFIX))
    }


def _check_format(headers: Mapping[str, bytes]) -> None:
    ctype = headers.get(CONTENT_TYPE)
    if ctype is not None and ctype.split(b";")[0].strip().lower() != _JSON_FORMAT:
        raise Poison(
            "decode",
            f'unsupported CloudEvents format "{ctype.decode(errors="replace")}" '
            "(application/cloudevents+json is read)",
            CONTENT_TYPE,
        )


def _data(ce: BaseCloudEvent, value: bytes, mode: Mode) -> dict[str, Any]:
    """The CloudEvent's data as a JSON object, with a lead."""
    ctype = ce.get_datacontenttype() or JSONFormat.DEFAULT_CONTENT_TYPE
    if not JSONFormat.JSON_CONTENT_TYPE_PATTERN.match(ctype):
        raise Poison(
            "decode",
            f'unsupported datacontenttype "{ctype}" (the data must be JSON)',
            "datacontenttype",
        )
    data = ce.get_data()
    if data is None:
        raise Poison("validate", "the CloudEvent has no data: it must carry the lead", "data")
    if isinstance(data, bytes):  # data_base64, or a binary-mode value that is not UTF-8
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise Poison("decode", f"the data is not JSON: {exc}", "data") from None
    elif isinstance(data, str) and mode == "binary":
        # The SDK hands back the text of a JSON-typed value it could not parse.
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise Poison("decode", f"the data is not valid JSON: {exc}", "data") from None
    if not isinstance(data, dict):
        raise Poison("validate", "the data must be a JSON object with the lead", "data")
    if "lead" not in data:
        raise Poison(
            "validate",
            "the CloudEvent's data has no lead: it must say who the event is about "
            "(lead.email, lead.anonymous_id or lead.user_id)",
            "lead",
        )
    return data


def _unreadable(exc: Exception, message: binding.KafkaMessage, mode: Mode) -> Poison:
    """What the SDK could not read, as precisely as the record shows it."""
    time: Any = None
    if mode == "binary":
        for name, raw in message.headers.items():
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                return Poison("decode", f"header {name} is not UTF-8", name)
            if name == binding.CE_PREFIX + "time":
                time = text
    else:
        try:
            doc = orjson.loads(message.value)
        except orjson.JSONDecodeError as e:
            return Poison("decode", f"not valid JSON: {e}")
        if not isinstance(doc, dict):
            return Poison("decode", "a structured CloudEvent is a JSON object")
        time = doc.get("time")
    if time is not None and not _is_timestamp(time):
        return Poison("validate", f"time: not an RFC 3339 timestamp: {time!r}", "time")
    return Poison("decode", f"not a readable CloudEvent: {exc}")


def _is_timestamp(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True
