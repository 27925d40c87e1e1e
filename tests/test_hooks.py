"""The webhook presets (``app.ingest.hooks``), unit by unit: each platform's documented
payload, signed as the platform signs it (real HMACs computed here), verified and mapped to
native events that the native validator accepts under the shipped default policy."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from starlette.datastructures import Headers

from app.errors import AppError
from app.ingest import hooks
from app.ingest.hooks import HookMessage, HookRejected, HookSource
from app.ingest.hooks.model import strip_trailing_commas
from app.ingest.native import validate_batch
from tests.support.domain import policy_with

POLICY = policy_with()
RECEIVED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()


def source(
    kind: str, secret: str | None = "s3cret", signal: str | None = None, **config: Any
) -> HookSource:
    return HookSource(f"{kind.replace('_', '-')}-main", kind, secret, signal, config)


def body_of(payload: Any) -> bytes:
    return orjson.dumps(payload)


def one(messages: list[HookMessage]) -> HookMessage:
    assert len(messages) == 1, messages
    return messages[0]


def mapped(src: HookSource, payload: Any, received_at: float = RECEIVED) -> dict[str, Any]:
    """The one event the payload maps to, checked by the native validator."""
    m = one(hooks.to_native(src, payload, received_at))
    assert m.outcome == "mapped", m
    assert m.reason is None
    assert m.event is not None
    assert_valid([m.event], received_at)
    return m.event


def assert_valid(events: list[dict[str, Any]], received_at: float = RECEIVED) -> None:
    """A native event under the shipped policy: its signal exists and every field passes."""
    valid, slots = validate_batch(copy.deepcopy(events), POLICY, received_at, transport="hook")
    assert slots == [None] * len(events), [s.as_dict() for s in slots if s is not None]
    assert [e.event_id for e in valid] == [e["event_id"] for e in events]


def refused(status: int, code: str, call: Any, *args: Any, **kwargs: Any) -> HookRejected:
    with pytest.raises(HookRejected) as info:
        call(*args, **kwargs)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


# -- Google Ads lead forms ----------------------------------------------------------------
# Written from developers.google.com/google-ads/webhook/docs/implementation: the WebhookLead
# fields (lead_id, user_column_data[{column_name, string_value, column_id}], api_version,
# form_id, campaign_id, google_key, is_test, gcl_id, adgroup_id, creative_id,
# asset_group_id, lead_stage, lead_submit_time "2024-09-26T12:30:00Z") and the column ids
# of LeadFormFieldUserInputType.
GOOGLE_LEAD = {
    "lead_id": "MjpsZWFkX2lkOjE3MjczNTM4MDAwMDA",
    "user_column_data": [
        {"column_name": "Full Name", "string_value": "Dana Scully", "column_id": "FULL_NAME"},
        {"column_name": "User Email", "string_value": "dana@gmail.com", "column_id": "EMAIL"},
        {
            "column_name": "Work Email",
            "string_value": "Dana.Scully@Acme.com",
            "column_id": "WORK_EMAIL",
        },
        {"column_name": "User Phone", "string_value": "+16505550123", "column_id": "PHONE_NUMBER"},
        {"column_name": "Company Name", "string_value": "Acme", "column_id": "COMPANY_NAME"},
        {"column_name": "Job Title", "string_value": "VP Sales", "column_id": "JOB_TITLE"},
        {"column_name": "Country", "string_value": "US", "column_id": "COUNTRY"},
        {"column_name": "City", "string_value": "Mountain View", "column_id": "CITY"},
        {"column_name": "Postal Code", "string_value": "94043", "column_id": "POSTAL_CODE"},
        {"column_name": "Company size", "string_value": "201-500", "column_id": "COMPANY_SIZE"},
    ],
    "api_version": "1.0",
    "form_id": 40000000000,
    "campaign_id": 50000000000,
    "google_key": "s3cret",
    "is_test": False,
    "gcl_id": "EAIaIQobChMI-google-click-id",
    "adgroup_id": 20000000000,
    "creative_id": 30000000000,
    "lead_stage": "",
    "lead_submit_time": "2024-09-26T12:30:00Z",
}

# "Send test data" as Google's own sample shows it: the key spelled Google_key, dummy
# values, is_test true and a trailing comma before the closing brace.
GOOGLE_TEST_SAMPLE = b"""{
  "lead_id": "TeSter-123-ABCDEFGHIJKLMNOPQRSTUVWXYZ-abcdefghijklmnopqrstuvwxyz-0123456789",
  "user_column_data": [
    {"column_name": "Full Name", "string_value": "FirstName LastName", "column_id": "FULL_NAME"},
    {"column_name": "User Email", "string_value": "test@example.com", "column_id": "EMAIL"},
  ],
  "api_version": "1.0",
  "form_id": 40000000000,
  "campaign_id": 50000000000,
  "Google_key": "s3cret",
  "is_test": true,
  "gcl_id": "TeSter-123-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
  "adgroup_id": 20000000000,
  "creative_id": 30000000000,
}"""


def test_google_lead_maps_to_a_form_submission() -> None:
    src = source("google_ads_lead_form")
    ev = mapped(src, hooks.parse(src, body_of(GOOGLE_LEAD)))
    assert ev["type"] == "form_submission"
    assert ev["event_id"] == "gads:MjpsZWFkX2lkOjE3MjczNTM4MDAwMDA"
    assert ev["source"] == "google-ads-lead-form-main"
    assert ev["occurred_at"] == "2024-09-26T12:30:00+00:00"
    lead = ev["lead"]
    # The work email wins: a B2B lead is matched to its account by it.
    assert lead["email"] == "dana.scully@acme.com"
    assert (lead["first_name"], lead["last_name"]) == ("Dana", "Scully")
    assert (lead["title"], lead["phone"], lead["country"]) == ("VP Sales", "+16505550123", "US")
    assert lead["traits"] == {
        "company": "Acme",
        "other_email": "dana@gmail.com",
        "city": "Mountain View",
        "postal_code": "94043",
        "company_size": "201-500",
    }
    assert ev["properties"] == {
        "form_id": 40000000000,
        "campaign_id": 50000000000,
        "adgroup_id": 20000000000,
        "creative_id": 30000000000,
        "gclid": "EAIaIQobChMI-google-click-id",
    }  # an empty lead_stage is no property
    assert ev["campaign"] == "50000000000"
    assert "account" not in ev  # no website in the form: the matcher uses the email domain


def test_google_key_in_the_body_is_the_signature() -> None:
    src = source("google_ads_lead_form")
    body = body_of(GOOGLE_LEAD)
    hooks.verify(src, {}, body, RECEIVED, payload=hooks.parse(src, body))
    hooks.verify(src, {}, body, RECEIVED)  # parses the body itself when not given
    wrong = body_of({**GOOGLE_LEAD, "google_key": "guess"})
    e = refused(401, "invalid_signature", hooks.verify, src, {}, wrong, RECEIVED)
    assert e.field == "google_key"
    absent = {k: v for k, v in GOOGLE_LEAD.items() if k != "google_key"}
    refused(401, "missing_signature", hooks.verify, src, {}, body_of(absent), RECEIVED)
    empty = body_of({**GOOGLE_LEAD, "google_key": ""})
    refused(401, "missing_signature", hooks.verify, src, {}, empty, RECEIVED)


def test_google_sample_with_trailing_comma_and_google_key_spelling_is_a_test_lead() -> None:
    src = source("google_ads_lead_form")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(GOOGLE_TEST_SAMPLE)  # strict JSON refuses Google's own sample
    payload = hooks.parse(src, GOOGLE_TEST_SAMPLE)
    assert payload["Google_key"] == "s3cret"
    hooks.verify(src, {}, GOOGLE_TEST_SAMPLE, RECEIVED, payload=payload)
    m = one(hooks.to_native(src, payload, RECEIVED))
    assert (m.outcome, m.event, m.reason) == ("test", None, "Google Ads test lead (is_test)")
    assert m.message_id.startswith("TeSter-123-")


def test_google_lead_without_email_is_rejected_with_where_we_looked() -> None:
    src = source("google_ads_lead_form")
    no_email = {
        **GOOGLE_LEAD,
        "user_column_data": [
            c for c in GOOGLE_LEAD["user_column_data"] if "EMAIL" not in c["column_id"]
        ],
    }
    m = one(hooks.to_native(src, no_email, RECEIVED))
    assert (m.outcome, m.event, m.message_id) == ("rejected", None, GOOGLE_LEAD["lead_id"])
    assert m.reason is not None and "user_column_data" in m.reason


def test_google_lead_retried_has_the_same_event_id() -> None:
    src = source("google_ads_lead_form")
    first = mapped(src, hooks.parse(src, body_of(GOOGLE_LEAD)), RECEIVED)
    again = mapped(src, hooks.parse(src, body_of(GOOGLE_LEAD)), RECEIVED + 60)
    assert first["event_id"] == again["event_id"]


def test_lenient_parsing_only_drops_commas_outside_strings() -> None:
    text = '{"a": [1, 2, ], "b": "x,}", "c": {"d": ",]",},}'
    assert orjson.loads(strip_trailing_commas(text)) == {"a": [1, 2], "b": "x,}", "c": {"d": ",]"}}
    assert strip_trailing_commas('{"q": "say \\",]\\" then",}') == '{"q": "say \\",]\\" then"}'


def test_a_body_that_is_not_a_json_object_is_400_invalid_body() -> None:
    for kind in ("google_ads_lead_form", "calendly", "typeform", "intercom"):
        src = source(kind)
        e = refused(400, "invalid_body", hooks.parse, src, b"{not json")
        assert e.field == "body"
        refused(400, "invalid_body", hooks.parse, src, b"[1, 2]")
        refused(400, "invalid_body", hooks.parse, src, b'"text"')
    # Only Google's bodies are read leniently.
    refused(400, "invalid_body", hooks.parse, source("typeform"), b'{"a": 1,}')


# -- Calendly ------------------------------------------------------------------------------
# Written from developer.calendly.com (webhook signatures; "Webhook Payload" and the Invitee
# resource): the envelope {event, created_at, created_by, payload}; the invitee's uri,
# email, name, first_name, last_name, status, timezone, text_reminder_number, rescheduled,
# old_invitee, questions_and_answers[{question, answer, position}], tracking{utm_*,
# salesforce_uuid}, scheduled_event{uri, name, start_time, end_time}, created_at.
CALENDLY_BOOKING = {
    "created_at": "2026-03-01T16:20:05.000000Z",
    "created_by": "https://api.calendly.com/users/AAAAAAAAAAAAAAAA",
    "event": "invitee.created",
    "payload": {
        "cancel_url": "https://calendly.com/cancellations/AAAAAAAAAAAAAAAA",
        "created_at": "2026-03-01T16:20:04.527950Z",
        "email": "Fox.Mulder@Acme.com",
        "event": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
        "first_name": None,
        "last_name": None,
        "name": "Fox Mulder",
        "new_invitee": None,
        "old_invitee": None,
        "questions_and_answers": [
            {"answer": "Head of Revenue Operations", "position": 0, "question": "Job title"},
            {"answer": "Acme", "position": 1, "question": "Company name"},
            {"answer": "https://www.acme.com", "position": 2, "question": "Company website"},
            {"answer": "Routing for 40 reps", "position": 3, "question": "What do you need?"},
        ],
        "reschedule_url": "https://calendly.com/reschedulings/AAAAAAAAAAAAAAAA",
        "rescheduled": False,
        "status": "active",
        "text_reminder_number": "+15055550142",
        "timezone": "America/New_York",
        "tracking": {
            "utm_campaign": "spring-demo",
            "utm_source": "linkedin",
            "utm_medium": "paid",
            "utm_content": None,
            "utm_term": None,
            "salesforce_uuid": None,
        },
        "updated_at": "2026-03-01T16:20:04.527950Z",
        "uri": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA",
        "scheduled_event": {
            "uri": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
            "name": "30 Minute Demo",
            "status": "active",
            "start_time": "2026-03-04T15:00:00.000000Z",
            "end_time": "2026-03-04T15:30:00.000000Z",
        },
    },
}


def calendly_headers(key: str, t: int, body: bytes) -> dict[str, str]:
    """As Calendly signs: v1 = hex HMAC-SHA256(signing key, "<t>." + raw body)."""
    v1 = hmac.new(key.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Calendly-Webhook-Signature": f"t={t},v1={v1}"}


def test_calendly_booking_maps_to_meeting_booked() -> None:
    src = source("calendly")
    ev = mapped(src, hooks.parse(src, body_of(CALENDLY_BOOKING)))
    uri = CALENDLY_BOOKING["payload"]["uri"]
    assert ev["type"] == "meeting_booked"
    assert ev["event_id"] == "calendly:" + hashlib.sha256(uri.encode()).hexdigest()[:32]
    assert ev["occurred_at"] == "2026-03-01T16:20:04.527950+00:00"  # when the invitee booked
    lead = ev["lead"]
    assert lead["email"] == "fox.mulder@acme.com"
    assert (lead["first_name"], lead["last_name"]) == ("Fox", "Mulder")
    assert (lead["title"], lead["phone"]) == ("Head of Revenue Operations", "+15055550142")
    assert lead["traits"]["company"] == "Acme"
    assert lead["traits"]["timezone"] == "America/New_York"
    assert lead["traits"]["what_do_you_need"] == "Routing for 40 reps"
    assert ev["account"] == {"domain": "acme.com", "name": "Acme"}
    assert ev["properties"] == {
        "event_name": "30 Minute Demo",
        "start_time": "2026-03-04T15:00:00.000000Z",
        "scheduled_event": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
        "utm_campaign": "spring-demo",
        "utm_source": "linkedin",
        "utm_medium": "paid",
    }
    assert ev["campaign"] == "spring-demo"


def test_calendly_signature() -> None:
    src = source("calendly", secret="calendly-signing-key")
    body = body_of(CALENDLY_BOOKING)
    t = int(RECEIVED) - 5
    hooks.verify(src, calendly_headers("calendly-signing-key", t, body), body, RECEIVED)
    # Starlette's Headers (what the route passes) and lower-case mappings alike.
    signed = calendly_headers("calendly-signing-key", t, body)
    hooks.verify(src, Headers(signed), body, RECEIVED)
    hooks.verify(src, {k.lower(): v for k, v in signed.items()}, body, RECEIVED)
    wrong = calendly_headers("another-key", t, body)
    e = refused(401, "invalid_signature", hooks.verify, src, wrong, body, RECEIVED)
    assert e.field == "Calendly-Webhook-Signature"
    tampered = body.replace(b"Fox", b"Dan")
    refused(401, "invalid_signature", hooks.verify, src, signed, tampered, RECEIVED)
    refused(401, "missing_signature", hooks.verify, src, {}, body, RECEIVED)
    malformed = {"Calendly-Webhook-Signature": "v1=abc"}
    refused(401, "invalid_signature", hooks.verify, src, malformed, body, RECEIVED)


def test_calendly_stale_timestamp_is_refused_both_ways() -> None:
    src = source("calendly", secret="k")
    body = body_of(CALENDLY_BOOKING)
    t = int(RECEIVED)
    hooks.verify(src, calendly_headers("k", t, body), body, t + 180)  # at the limit
    e = refused(
        401, "stale_signature", hooks.verify, src, calendly_headers("k", t, body), body, t + 181
    )
    assert "180" in e.message
    ahead = calendly_headers("k", t + 181, body)
    refused(401, "stale_signature", hooks.verify, src, ahead, body, t)


def test_calendly_retry_has_the_same_event_id() -> None:
    """A retry is signed anew (a new t) but is the same booking: the same event id."""
    src = source("calendly", secret="k")
    body = body_of(CALENDLY_BOOKING)
    ids = []
    for delay in (0, 300):
        now = RECEIVED + delay
        hooks.verify(src, calendly_headers("k", int(now), body), body, now)
        ids.append(mapped(src, hooks.parse(src, body), now)["event_id"])
    assert ids[0] == ids[1]


def test_calendly_cancellation_is_ignored_naming_the_event() -> None:
    src = source("calendly")
    canceled = copy.deepcopy(CALENDLY_BOOKING)
    canceled["event"] = "invitee.canceled"
    canceled["payload"].update(status="canceled", rescheduled=True)
    m = one(hooks.to_native(src, canceled, RECEIVED))
    assert (m.outcome, m.event) == ("ignored", None)
    assert m.reason is not None and "invitee.canceled" in m.reason
    assert m.message_id == CALENDLY_BOOKING["payload"]["uri"]


def test_calendly_reschedule_is_the_booking_already_counted() -> None:
    """Calendly sends invitee.canceled (rescheduled) then a new invitee.created naming the
    old invitee: the new one scores nothing, the booking counted once already."""
    moved = copy.deepcopy(CALENDLY_BOOKING)
    old = moved["payload"]["uri"]
    moved["payload"].update(uri=old + "-2", old_invitee=old)
    m = one(hooks.to_native(source("calendly"), moved, RECEIVED))
    assert (m.outcome, m.event) == ("ignored", None)
    assert m.reason is not None and "old_invitee" in m.reason


def test_calendly_booking_without_email_is_rejected() -> None:
    src = source("calendly")
    no_email = copy.deepcopy(CALENDLY_BOOKING)
    no_email["payload"]["email"] = None
    m = one(hooks.to_native(src, no_email, RECEIVED))
    assert (m.outcome, m.event) == ("rejected", None)
    assert m.reason == "no email or anonymous id in payload.email"


# -- Typeform ------------------------------------------------------------------------------
# Written from typeform.com/developers/webhooks/example-payload (trimmed): event_id,
# event_type "form_response", form_response{form_id, token, submitted_at, landed_at, hidden,
# definition, answers[]} with typed answers ({"type": "email", "email": …, "field": {id,
# type, ref}}); signed per .../webhooks/secure-your-webhooks: Typeform-Signature:
# sha256=<base64 HMAC-SHA256(secret, raw body)>.
TYPEFORM_RESPONSE = {
    "event_id": "LtWXD3crgy",
    "event_type": "form_response",
    "form_response": {
        "form_id": "lT4Z3j",
        "token": "a3a12ec67a1365927098a606107fac15",
        "submitted_at": "2026-03-01T18:17:02Z",
        "landed_at": "2026-03-01T18:07:02Z",
        "calculated": {"score": 9},
        "hidden": {"user_id": "abc123456", "utm_source": "google", "utm_campaign": "q1-search"},
        "definition": {
            "id": "lT4Z3j",
            "title": "Webhooks example",
            "fields": [
                {"id": "SMEUb7VJz92Q", "type": "email", "ref": "readable_ref_email"},
                {"id": "JwWggjAKtOkA", "type": "short_text", "ref": "first_name"},
            ],
        },
        "answers": [
            {
                "type": "text",
                "text": "It's cold right now! I live in an older medium-sized city.",
                "field": {"id": "DlXFaesGBpoF", "type": "long_text", "ref": "where_you_live"},
            },
            {
                "type": "email",
                "email": "Laura@Example.com",
                "field": {"id": "SMEUb7VJz92Q", "type": "email", "ref": "readable_ref_email"},
            },
            {
                "type": "text",
                "text": "Laura",
                "field": {"id": "JwWggjAKtOkA", "type": "short_text", "ref": "first_name"},
            },
            {
                "type": "text",
                "text": "Director of Sales",
                "field": {"id": "X1job", "type": "short_text", "ref": "job_title"},
            },
            {
                "type": "text",
                "text": "Example Corp",
                "field": {"id": "X2co", "type": "short_text", "ref": "company"},
            },
            {
                "type": "choices",
                "choices": {"labels": ["London", "Sydney"]},
                "field": {"id": "PNe8ZKBK8C2Q", "type": "picture_choice", "ref": "cities"},
            },
            {"type": "number", "number": 5, "field": {"id": "Q7M2XAwY04dW", "type": "number"}},
            {
                "type": "boolean",
                "boolean": True,
                "field": {"id": "gFFf3xAkJKsr", "type": "yes_no", "ref": "wants_demo"},
            },
        ],
    },
}


def typeform_headers(secret: str, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"Typeform-Signature": "sha256=" + base64.b64encode(mac).decode()}


def test_typeform_response_maps_to_a_form_submission() -> None:
    src = source("typeform")
    ev = mapped(src, hooks.parse(src, body_of(TYPEFORM_RESPONSE)))
    assert ev["type"] == "form_submission"
    assert ev["event_id"] == "typeform:a3a12ec67a1365927098a606107fac15"  # the response
    assert ev["occurred_at"] == "2026-03-01T18:17:02+00:00"
    lead = ev["lead"]
    assert (lead["email"], lead["first_name"], lead["title"]) == (
        "laura@example.com",
        "Laura",
        "Director of Sales",
    )
    assert lead["user_id"] == "abc123456"  # the hidden field user_id
    assert lead["traits"] == {
        "where_you_live": "It's cold right now! I live in an older medium-sized city.",
        "cities": "London, Sydney",
        "q7m2xawy04dw": 5,
        "wants_demo": True,
        "company": "Example Corp",
    }
    assert ev["properties"] == {
        "form_id": "lT4Z3j",
        "form_title": "Webhooks example",
        "utm_source": "google",
        "utm_campaign": "q1-search",
    }
    assert ev["campaign"] == "q1-search"


def test_typeform_signature() -> None:
    src = source("typeform", secret="tf-secret")
    body = body_of(TYPEFORM_RESPONSE)
    hooks.verify(src, typeform_headers("tf-secret", body), body, RECEIVED)
    hooks.verify(src, Headers(typeform_headers("tf-secret", body)), body, RECEIVED)
    wrong = typeform_headers("other", body)
    e = refused(401, "invalid_signature", hooks.verify, src, wrong, body, RECEIVED)
    assert e.field == "Typeform-Signature"
    good = typeform_headers("tf-secret", body)["Typeform-Signature"]
    sha1 = {"Typeform-Signature": good.replace("sha256=", "sha1=")}
    refused(401, "invalid_signature", hooks.verify, src, sha1, body, RECEIVED)
    garbage = {"Typeform-Signature": "sha256=not base64!"}
    refused(401, "invalid_signature", hooks.verify, src, garbage, body, RECEIVED)
    refused(401, "missing_signature", hooks.verify, src, {}, body, RECEIVED)


def test_typeform_email_from_a_hidden_field_and_retry_keeps_the_id() -> None:
    src = source("typeform")
    hidden_only = copy.deepcopy(TYPEFORM_RESPONSE)
    response = hidden_only["form_response"]
    response["answers"] = [a for a in response["answers"] if a["type"] != "email"]
    response["hidden"] = {"email": "ops@example.org", "utm_medium": "cpc"}
    ev = mapped(src, hidden_only)
    assert ev["lead"]["email"] == "ops@example.org"
    assert ev["properties"]["utm_medium"] == "cpc"
    retried = {**hidden_only, "event_id": "a-new-delivery-id"}
    assert mapped(src, retried)["event_id"] == ev["event_id"]


def test_typeform_response_without_email_is_rejected() -> None:
    src = source("typeform")
    anonymous = copy.deepcopy(TYPEFORM_RESPONSE)
    response = anonymous["form_response"]
    response["answers"] = [a for a in response["answers"] if a["type"] != "email"]
    response["hidden"] = {}
    m = one(hooks.to_native(src, anonymous, RECEIVED))
    assert (m.outcome, m.event, m.message_id) == ("rejected", None, "LtWXD3crgy")
    assert m.reason is not None and "form_response.answers" in m.reason


# -- Intercom ------------------------------------------------------------------------------
# Written from developers.intercom.com/docs/references/webhooks/webhook-models: the
# notification envelope {type: "notification_event", app_id, data: {type:
# "notification_event_data", item}, id: "notif_…", topic, delivery_status,
# delivery_attempts, first_sent_at, created_at}; contact items (email, name, phone,
# external_id, role, location, custom_attributes); conversation items whose source.author
# is {type, id, name, email} and whose conversation_parts hold the replies. Signed with
# X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, raw body)>.
INTERCOM_LEAD = {
    "type": "notification_event",
    "app_id": "ebw5n3um",
    "data": {
        "type": "notification_event_data",
        "item": {
            "type": "contact",
            "id": "65f1c0c4a2b9a3d5e1000001",
            "role": "lead",
            "email": "walter.skinner@acme.com",
            "phone": None,
            "name": "Walter Skinner",
            "external_id": None,
            "location": {"type": "location", "country": "United States", "city": "Washington"},
            "custom_attributes": {"job_title": "CFO", "plan_interest": "enterprise"},
            "created_at": 1772438400,
        },
    },
    "links": {},
    "id": "notif_4e3504a3-ba3f-46dc-ab48-8e4d5bdfdf4e",
    "topic": "contact.lead.created",
    "delivery_status": "pending",
    "delivery_attempts": 1,
    "delivered_at": 0,
    "first_sent_at": 1772438401,
    "created_at": 1772438401,
}

INTERCOM_CONVERSATION = {
    "type": "notification_event",
    "app_id": "ebw5n3um",
    "data": {
        "type": "notification_event_data",
        "item": {
            "type": "conversation",
            "id": "147",
            "created_at": 1772438000,
            "source": {
                "type": "conversation",
                "id": "403918316",
                "delivered_as": "customer_initiated",
                "subject": "",
                "body": "<p>Does the Enterprise plan include SSO?</p>",
                "author": {
                    "type": "user",
                    "id": "65f1c0c4a2b9a3d5e1000002",
                    "name": "John Doggett",
                    "email": "john@initech.io",
                },
                "url": "https://ours.example/pricing",
            },
            "contacts": {
                "type": "contact.list",
                "contacts": [{"type": "contact", "id": "65f1c0c4a2b9a3d5e1000002"}],
            },
            "conversation_parts": {"type": "conversation_part.list", "conversation_parts": []},
        },
    },
    "id": "notif_7d0cf1f0-1c9a-4b8e-9a52-2b1c2f3a4d5e",
    "topic": "conversation.user.created",
    "delivery_attempts": 1,
    "first_sent_at": 1772438002,
    "created_at": 1772438002,
}


def intercom_headers(secret: str, body: bytes) -> dict[str, str]:
    return {"X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()}


def test_intercom_new_lead_maps_to_a_chat_message() -> None:
    src = source("intercom", secret="client-secret")
    ev = mapped(src, hooks.parse(src, body_of(INTERCOM_LEAD)))
    assert ev["type"] == "chat_message"
    assert ev["event_id"] == "intercom:notif_4e3504a3-ba3f-46dc-ab48-8e4d5bdfdf4e"
    assert ev["occurred_at"] == datetime.fromtimestamp(1772438401, UTC).isoformat()
    lead = ev["lead"]
    assert lead["email"] == "walter.skinner@acme.com"
    assert lead["anonymous_id"] == "intercom:65f1c0c4a2b9a3d5e1000001"
    assert (lead["first_name"], lead["last_name"], lead["title"]) == ("Walter", "Skinner", "CFO")
    assert "country" not in lead  # "United States" is not an ISO code: kept as a trait
    assert lead["traits"] == {
        "country_name": "United States",
        "city": "Washington",
        "plan_interest": "enterprise",
    }
    assert ev["properties"] == {"topic": "contact.lead.created", "contact_role": "lead"}


def test_intercom_conversation_started_and_replied() -> None:
    src = source("intercom", secret="client-secret")
    ev = mapped(src, INTERCOM_CONVERSATION)
    assert ev["lead"]["email"] == "john@initech.io"
    assert ev["lead"]["anonymous_id"] == "intercom:65f1c0c4a2b9a3d5e1000002"
    assert ev["properties"] == {
        "topic": "conversation.user.created",
        "conversation_id": "147",
        "channel": "conversation",
        "url": "https://ours.example/pricing",
    }
    reply = copy.deepcopy(INTERCOM_CONVERSATION)
    reply.update(id="notif_reply-1", topic="conversation.user.replied")
    reply["data"]["item"]["conversation_parts"]["conversation_parts"] = [
        {
            "type": "conversation_part",
            "part_type": "comment",
            "author": {"type": "admin", "id": "814860", "name": "Ops", "email": "ops@ours.example"},
        },
        {
            "type": "conversation_part",
            "part_type": "comment",
            "author": {"type": "lead", "id": "65f1c0c4a2b9a3d5e1000009", "email": "m@initech.io"},
        },
    ]
    replied = mapped(src, reply)
    assert replied["lead"]["email"] == "m@initech.io"  # the reply's author, not the admin
    assert replied["event_id"] == "intercom:notif_reply-1"


def test_intercom_signature() -> None:
    src = source("intercom", secret="client-secret")
    body = body_of(INTERCOM_LEAD)
    hooks.verify(src, intercom_headers("client-secret", body), body, RECEIVED)
    hooks.verify(src, Headers(intercom_headers("client-secret", body)), body, RECEIVED)
    wrong = intercom_headers("not-the-secret", body)
    e = refused(401, "invalid_signature", hooks.verify, src, wrong, body, RECEIVED)
    assert e.field == "X-Hub-Signature"
    refused(401, "missing_signature", hooks.verify, src, {}, body, RECEIVED)
    unprefixed = {"X-Hub-Signature": intercom_headers("client-secret", body)["X-Hub-Signature"][5:]}
    refused(401, "invalid_signature", hooks.verify, src, unprefixed, body, RECEIVED)


def test_intercom_ping_and_other_topics_are_ignored() -> None:
    src = source("intercom", secret="client-secret")
    ping = {
        "type": "notification_event",
        "app_id": "ebw5n3um",
        "data": {"type": "notification_event_data", "item": {"type": "ping", "message": "hi"}},
        "id": "notif_ping",
        "topic": "ping",
        "created_at": 1772438401,
    }
    body = body_of(ping)
    hooks.verify(src, intercom_headers("client-secret", body), body, RECEIVED)  # ping is signed
    m = one(hooks.to_native(src, hooks.parse(src, body), RECEIVED))
    assert (m.outcome, m.event, m.reason, m.message_id) == ("ignored", None, "ping", "notif_ping")
    admin = {**INTERCOM_CONVERSATION, "topic": "conversation.admin.replied"}
    m = one(hooks.to_native(src, admin, RECEIVED))
    assert (m.outcome, m.event) == ("ignored", None)
    assert m.reason is not None and "conversation.admin.replied" in m.reason


def test_intercom_message_with_nobody_identified_is_rejected() -> None:
    src = source("intercom", secret="client-secret")
    nobody = copy.deepcopy(INTERCOM_CONVERSATION)
    item = nobody["data"]["item"]
    item["source"]["author"] = {"type": "user", "id": "", "name": "", "email": ""}
    item["contacts"]["contacts"] = []
    m = one(hooks.to_native(src, nobody, RECEIVED))
    assert (m.outcome, m.event) == ("rejected", None)
    assert m.reason is not None and "data.item.source.author" in m.reason


# -- generic --------------------------------------------------------------------------------
GENERIC_CONFIG: dict[str, Any] = {
    "each": "events",
    "mapping": {
        "event_id": "id",
        "type": "kind",
        "occurred_at": "created",
        "lead": {
            "email": "person.email",
            "anonymous_id": "person.visitor",
            "title": "person.job",
            "traits": {"plan": "person.plan"},
        },
        "account": {"domain": "company.website", "name": "company.name"},
        "account.employees": "company.size",
        "properties.page": "context.url",
        "properties": "context.utm",
    },
    "signature": {
        "header": "X-Acme-Signature",
        "algorithm": "sha256",
        "encoding": "hex",
        "prefix": "sha256=",
        "timestamp_header": "X-Acme-Timestamp",
        "signed_payload": "timestamp.body",
    },
}
GENERIC_BODY = {
    "events": [
        {
            "id": 9001,
            "kind": "demo_request",
            "created": 1772438400,
            "person": {"email": "Ana@Globex.com", "job": "CTO", "plan": "pro", "visitor": "v-1"},
            "company": {"website": "https://globex.com/", "name": "Globex", "size": "350"},
            "context": {"url": "/pricing", "utm": {"utm_source": "newsletter"}},
        },
        {"id": "9002", "created": "2026-03-01T10:00:00Z", "person": {"visitor": "v-2"}},
        {"id": "9003", "person": {"job": "Intern"}},
    ]
}


def generic_headers(secret: str, t: int, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Acme-Signature": f"sha256={mac}", "X-Acme-Timestamp": str(t)}


def generic_source(signal: str | None = "form_submission") -> HookSource:
    config = hooks.check_config("generic", GENERIC_CONFIG, signal=signal)
    return HookSource("acme-app", "generic", "generic-key", signal, config)


def test_generic_config_is_normalised() -> None:
    config = hooks.check_config("generic", GENERIC_CONFIG, signal=None)
    assert config["mapping"]["lead.email"] == "person.email"
    assert config["mapping"]["account.employees"] == "company.size"
    assert config["mapping"]["properties"] == "context.utm"
    assert config["each"] == "events"
    assert config["signature"] == {**GENERIC_CONFIG["signature"], "tolerance_seconds": 300}
    assert hooks.check_config("generic", config, signal=None) == config  # idempotent


def test_generic_maps_each_message() -> None:
    src = generic_source()
    body = body_of(GENERIC_BODY)
    messages = hooks.to_native(src, hooks.parse(src, body), RECEIVED)
    assert [(m.message_id, m.outcome) for m in messages] == [
        ("9001", "mapped"),
        ("9002", "mapped"),
        ("9003", "rejected"),
    ]
    first, second = (m.event for m in messages[:2])
    assert first is not None and second is not None
    assert_valid([first, second])
    assert first["event_id"] == "hook:acme-app:9001"
    assert first["type"] == "demo_request"  # the mapped type
    assert first["occurred_at"] == datetime.fromtimestamp(1772438400, UTC).isoformat()
    assert first["lead"] == {
        "email": "ana@globex.com",
        "anonymous_id": "v-1",
        "title": "CTO",
        "traits": {"plan": "pro", "company": "Globex"},
    }
    assert first["account"] == {"domain": "globex.com", "name": "Globex", "employees": 350}
    assert first["properties"] == {"utm_source": "newsletter", "page": "/pricing"}
    assert second["type"] == "form_submission"  # no type in the message: the source's signal
    assert second["occurred_at"] == "2026-03-01T10:00:00+00:00"
    assert messages[2].reason == (
        "no email or anonymous id in lead.email (`person.email`), "
        "lead.anonymous_id (`person.visitor`)"
    )


def test_generic_signature_as_configured() -> None:
    src = generic_source()
    body = body_of(GENERIC_BODY)
    t = int(RECEIVED)
    hooks.verify(src, generic_headers("generic-key", t, body), body, RECEIVED)
    hooks.verify(src, Headers(generic_headers("generic-key", t, body)), body, RECEIVED + 300)
    wrong = generic_headers("other-key", t, body)
    refused(401, "invalid_signature", hooks.verify, src, wrong, body, RECEIVED)
    # The timestamp is signed: changing it breaks the signature.
    moved = {**generic_headers("generic-key", t, body), "X-Acme-Timestamp": str(t + 1)}
    refused(401, "invalid_signature", hooks.verify, src, moved, body, RECEIVED)
    no_ts = {"X-Acme-Signature": generic_headers("generic-key", t, body)["X-Acme-Signature"]}
    e = refused(401, "missing_signature", hooks.verify, src, no_ts, body, RECEIVED)
    assert e.field == "X-Acme-Timestamp"
    refused(401, "missing_signature", hooks.verify, src, {}, body, RECEIVED)
    old = generic_headers("generic-key", t - 301, body)
    refused(401, "stale_signature", hooks.verify, src, old, body, RECEIVED)


def test_generic_base64_sha1_body_only() -> None:
    config = {
        "mapping": {"event_id": "id", "lead.email": "email"},
        "signature": {"header": "X-Sig", "algorithm": "sha1", "encoding": "base64"},
    }
    src = HookSource(
        "forms",
        "generic",
        "k",
        "form_submission",
        hooks.check_config("generic", config, signal="form_submission"),
    )
    body = body_of({"id": "a1", "email": "x@y.io"})
    sig = base64.b64encode(hmac.new(b"k", body, hashlib.sha1).digest()).decode()
    hooks.verify(src, {"x-sig": sig}, body, RECEIVED)
    refused(
        401, "invalid_signature", hooks.verify, src, {"x-sig": sig[:-4] + "AAAA"}, body, RECEIVED
    )
    ev = mapped(src, hooks.parse(src, body))
    assert (ev["event_id"], ev["type"], ev["lead"]["email"]) == (
        "hook:forms:a1",
        "form_submission",
        "x@y.io",
    )
    assert ev["occurred_at"] == datetime.fromtimestamp(RECEIVED, UTC).isoformat()  # received


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["mapping"].pop("event_id"), "mapping.event_id"),
        (lambda c: c["mapping"].update(lead={"title": "person.job"}), "mapping.lead.email"),
        (lambda c: c["mapping"].update({"lead.email": "person.[email"}), "mapping.lead.email"),
        (lambda c: c["mapping"].update({"lead.shoe_size": "x"}), "mapping.lead.shoe_size"),
        (lambda c: c["mapping"].update({"properties.bad key": "x"}), "mapping.properties.bad key"),
        (lambda c: c["mapping"].update({"event_id": 7}), "mapping.event_id"),
        (lambda c: c["mapping"].update({"event_id": "a" * 501}), "mapping.event_id"),
        (lambda c: c["mapping"].update({f"properties.p{i}": "x" for i in range(64)}), "mapping"),
        (lambda c: c.update(each="events[?"), "each"),
        (lambda c: c.update(extra=1), "extra"),
        (lambda c: c.pop("signature"), "signature"),
        (lambda c: c["signature"].update(algorithm="md5"), "signature.algorithm"),
        (lambda c: c["signature"].update(encoding="base32"), "signature.encoding"),
        (lambda c: c["signature"].update(header="X Bad"), "signature.header"),
        (lambda c: c["signature"].update(tolerance_seconds=0), "signature.tolerance_seconds"),
        (lambda c: c["signature"].update(timestamp_header=None), "signature.timestamp_header"),
        (
            lambda c: c["signature"].update(signed_payload="body.timestamp"),
            "signature.signed_payload",
        ),
        (lambda c: c["signature"].update(secret="x"), "signature.secret"),
    ],
)
def test_generic_bad_config_names_the_field(change: Any, field: str) -> None:
    config = copy.deepcopy(GENERIC_CONFIG)
    change(config)
    with pytest.raises(ValueError) as info:
        hooks.check_config("generic", config, signal="form_submission")
    assert str(info.value).split(": ", 1)[0] == field, str(info.value)


def test_generic_type_comes_from_the_mapping_or_the_source_signal() -> None:
    config = copy.deepcopy(GENERIC_CONFIG)
    config["mapping"].pop("type")
    with pytest.raises(ValueError, match=r"^mapping\.type: required when the source has no signal"):
        hooks.check_config("generic", config, signal=None)
    assert "type" not in hooks.check_config("generic", config, signal="chat_message")["mapping"]


def test_a_generic_source_with_an_unchecked_bad_config_rejects_without_raising() -> None:
    src = HookSource("broken", "generic", "k", None, {"mapping": {"event_id": "["}})
    m = one(hooks.to_native(src, {"id": 1}, RECEIVED))
    assert m.outcome == "rejected"
    assert m.reason is not None and m.reason.startswith("the source's config is invalid: mapping")
    refused(401, "invalid_signature", hooks.verify, src, {}, b"{}", RECEIVED)


# -- the interface around the presets ---------------------------------------------------------
def test_a_per_source_signal_overrides_the_preset_default() -> None:
    ev = mapped(source("typeform", signal="demo_request"), TYPEFORM_RESPONSE)
    assert ev["type"] == "demo_request"
    assert hooks.DEFAULT_SIGNAL == {
        "google_ads_lead_form": "form_submission",
        "calendly": "meeting_booked",
        "typeform": "form_submission",
        "intercom": "chat_message",
    }
    for signal in ("form_submission", "meeting_booked", "chat_message"):
        assert signal in POLICY.signals


def test_secrets_config_and_answers() -> None:
    assert hooks.PRESET_KINDS == (
        "google_ads_lead_form",
        "calendly",
        "typeform",
        "intercom",
        "generic",
    )
    assert hooks.needs_secret("intercom") is True
    assert hooks.generate_secret("intercom") is None
    for kind in ("google_ads_lead_form", "calendly", "typeform", "generic"):
        assert hooks.needs_secret(kind) is False
        a, b = hooks.generate_secret(kind), hooks.generate_secret(kind)
        assert a is not None and b is not None and a != b and len(a) >= 40
    for kind in hooks.PRESET_KINDS:
        assert hooks.answer(kind) == (200, {})
    assert hooks.check_config("calendly", {}) == {}
    with pytest.raises(ValueError, match=r"^tolerance: unknown option for kind calendly"):
        hooks.check_config("calendly", {"tolerance": 60})
    with pytest.raises(ValueError, match=r"^kind: unknown kind"):
        hooks.check_config("hubspot", {})


def test_a_source_without_a_secret_verifies_nothing() -> None:
    src = source("typeform", secret=None)
    body = body_of(TYPEFORM_RESPONSE)
    refused(401, "invalid_signature", hooks.verify, src, typeform_headers("", body), body, RECEIVED)


def test_hook_rejected_is_an_application_error() -> None:
    e = HookRejected(401, "invalid_signature", "X-Hub-Signature: no match", "X-Hub-Signature")
    assert isinstance(e, AppError)
    assert (e.status, e.code, e.message, e.field) == (
        401,
        "invalid_signature",
        "X-Hub-Signature: no match",
        "X-Hub-Signature",
    )
    assert e.body() == {
        "code": "invalid_signature",
        "message": "X-Hub-Signature: no match",
        "field": "X-Hub-Signature",
    }
