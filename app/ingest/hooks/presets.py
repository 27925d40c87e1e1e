"""Google Ads lead forms, Calendly and Typeform: each platform's documented JSON → native
events. (Intercom is in ``chat.py``.) Every mapper returns one ``HookMessage`` per message.

Sources of the formats:
- Google Ads: developers.google.com/google-ads/webhook/docs/implementation (WebhookLead,
  ``user_column_data[]`` of ``{column_name, string_value, column_id}``).
- Calendly: developer.calendly.com webhooks (envelope ``{event, created_at, payload}``;
  the payload is the Invitee, with ``scheduled_event``, ``tracking`` and
  ``questions_and_answers``).
- Typeform: typeform.com/developers/webhooks/example-payload (``form_response`` with typed
  ``answers`` and ``hidden`` fields).
"""

from __future__ import annotations

from typing import Any

from app.ingest.hooks.model import (
    ID_PREFIX,
    HookMessage,
    HookSource,
    as_dict,
    as_list,
    digest,
    event_id,
    id_text,
    ignored,
    person_field,
    rejected,
    short,
    signal_of,
    slug,
    when,
)
from app.ingest.hooks.person import Person, native_event

# Google's LeadFormFieldUserInputType values that are person fields; the rest (CITY,
# POSTAL_CODE, qualifying questions, custom questions) become traits by their id.
_GOOGLE_COLUMNS = {
    "WORK_EMAIL": "email",
    "EMAIL": "email",
    "FULL_NAME": "name",
    "FIRST_NAME": "first_name",
    "LAST_NAME": "last_name",
    "WORK_PHONE": "phone",
    "PHONE_NUMBER": "phone",
    "JOB_TITLE": "title",
    "COMPANY_NAME": "company",
    "COUNTRY": "country",
}
# Work details first: a B2B lead is matched to its account by the work email's domain.
_GOOGLE_ORDER = list(_GOOGLE_COLUMNS)
_GOOGLE_PROPERTIES = ("form_id", "campaign_id", "adgroup_id", "creative_id", "asset_group_id")


def google_ads(source: HookSource, payload: dict[str, Any], received_at: float) -> HookMessage:
    """One lead: the person from ``user_column_data``, the ids as properties."""
    lead_id = id_text(payload.get("lead_id"))
    if payload.get("is_test") is True:
        return HookMessage(lead_id, None, "test", "Google Ads test lead (is_test)")
    if not lead_id:
        return rejected("", "no lead_id in the body")
    columns: dict[str, Any] = {}
    person = Person()
    for column in as_list(payload.get("user_column_data")):
        column = as_dict(column)
        key = id_text(column.get("column_id")).upper() or slug(column.get("column_name"))
        value = column.get("string_value")
        if not key or value is None:
            continue
        if key in _GOOGLE_COLUMNS:
            columns.setdefault(key, value)
        else:
            what = person_field(key) or person_field(column.get("column_name"), loose=True)
            if what == "website":
                person.offer(what, value)
            person.trait(key, value)
    for key in _GOOGLE_ORDER:
        if key in columns:
            person.offer(_GOOGLE_COLUMNS[key], columns[key])
    if not person.identified():
        return rejected(lead_id, "no email or anonymous id in user_column_data (EMAIL, WORK_EMAIL)")
    properties = {key: payload.get(key) for key in _GOOGLE_PROPERTIES}
    properties["gclid"] = payload.get("gcl_id")
    properties["lead_stage"] = payload.get("lead_stage")
    event = native_event(
        event_id=event_id(ID_PREFIX["google_ads_lead_form"], lead_id),
        type=signal_of(source) or "form_submission",
        occurred_at=when(payload.get("lead_submit_time"), received_at),
        source=source.name,
        person=person,
        properties=properties,
        campaign=id_text(payload.get("campaign_id")) or None,
    )
    return HookMessage(lead_id, event, "mapped")


def _utm(tracking: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tracking.items() if k.startswith("utm_") and short(v) is not None}


def calendly(source: HookSource, payload: dict[str, Any], received_at: float) -> HookMessage:
    """``invitee.created`` is a booking; every other event is ignored, by name."""
    kind = payload.get("event")
    invitee = as_dict(payload.get("payload"))
    uri = id_text(invitee.get("uri"))
    if kind != "invitee.created":
        return ignored(uri, f'Calendly event "{kind}" is not a booking (event)')
    if not uri:
        return rejected("", "no payload.uri (the invitee) in the body")
    if invitee.get("old_invitee"):
        # A reschedule is the booking scored when it was first made, not a new one.
        return ignored(uri, "a reschedule (payload.old_invitee): the booking already counted")
    person = Person()
    person.offer("email", invitee.get("email"))
    person.offer("first_name", invitee.get("first_name"))
    person.offer("last_name", invitee.get("last_name"))
    person.offer("name", invitee.get("name"))
    person.offer("phone", invitee.get("text_reminder_number"))
    person.trait("timezone", invitee.get("timezone"))
    # Company and title come only from the event type's own questions.
    for qa in as_list(invitee.get("questions_and_answers")):
        qa = as_dict(qa)
        what = person_field(qa.get("question"), loose=True)
        if what is not None and what != "email":
            person.offer(what, qa.get("answer"))
        else:
            person.trait(qa.get("question"), qa.get("answer"))
    if not person.identified():
        return rejected(uri, "no email or anonymous id in payload.email")
    scheduled = as_dict(invitee.get("scheduled_event"))
    tracking = as_dict(invitee.get("tracking"))
    properties: dict[str, Any] = {
        "event_name": scheduled.get("name"),
        "start_time": scheduled.get("start_time"),
        "scheduled_event": scheduled.get("uri"),
        **_utm(tracking),
    }
    event = native_event(
        # Invitee URIs are long; their digest is the id, the same on every retry.
        event_id=f"{ID_PREFIX['calendly']}:{digest(uri)}",
        type=signal_of(source) or "meeting_booked",
        occurred_at=when(invitee.get("created_at") or payload.get("created_at"), received_at),
        source=source.name,
        person=person,
        properties=properties,
        campaign=tracking.get("utm_campaign"),
    )
    return HookMessage(uri, event, "mapped")


def typeform_answer(answer: dict[str, Any]) -> Any:
    """An answer's value by its type: ``{"type": "email", "email": …}``, a choice's label,
    several choices' labels."""
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice":
        choice = as_dict(value)
        return choice.get("label") or choice.get("other")
    if kind == "choices":
        choices = as_dict(value)
        labels = [x for x in as_list(choices.get("labels")) if isinstance(x, str)]
        if isinstance(choices.get("other"), str):
            labels.append(choices["other"])
        return labels or None
    if kind == "payment":
        return as_dict(value).get("amount")
    return value


def _typeform_hidden(person: Person, hidden: dict[str, Any], properties: dict[str, Any]) -> None:
    """Hidden fields: identity, person fields and UTM parameters; the rest as properties."""
    for key, value in hidden.items():
        s = slug(key) or ""
        if s in ("anonymous_id", "ajs_anonymous_id", "anonymousid"):
            person.offer("anonymous_id", value)
        elif s in ("user_id", "ajs_user_id", "userid"):
            person.offer("user_id", value)
        elif (what := person_field(s)) is not None:
            person.offer(what, value)
        elif s not in properties and short(value) is not None:
            properties[s] = value


def typeform(source: HookSource, payload: dict[str, Any], received_at: float) -> HookMessage:
    """A ``form_response``: email from an email answer (else a hidden ``email``), other
    answers as traits by their field's ``ref``."""
    message_id = id_text(payload.get("event_id"))
    if payload.get("event_type") != "form_response":
        return ignored(message_id, f'Typeform event_type "{payload.get("event_type")}"')
    response = as_dict(payload.get("form_response"))
    # The response's token: the same submission has the same id however it is delivered.
    key = id_text(response.get("token")) or message_id
    if not key:
        return rejected("", "no form_response.token or event_id in the body")
    person = Person()
    for answer in as_list(response.get("answers")):
        answer = as_dict(answer)
        value = typeform_answer(answer)
        fld = as_dict(answer.get("field"))
        ref = id_text(fld.get("ref")) or id_text(fld.get("id"))
        if answer.get("type") == "email":
            person.offer("email", value)
        elif answer.get("type") == "phone_number":
            person.offer("phone", value)
        elif (what := person_field(ref)) is not None:
            person.offer(what, value)
        else:
            person.trait(ref, value)
    definition = as_dict(response.get("definition"))
    properties: dict[str, Any] = {
        "form_id": response.get("form_id"),
        "form_title": definition.get("title"),
    }
    hidden = as_dict(response.get("hidden"))
    _typeform_hidden(person, hidden, properties)
    if not person.identified():
        return rejected(
            message_id or key,
            "no email or anonymous id in form_response.answers (an email answer) or "
            "form_response.hidden (email, anonymous_id, user_id)",
        )
    event = native_event(
        event_id=event_id(ID_PREFIX["typeform"], key),
        type=signal_of(source) or "form_submission",
        occurred_at=when(response.get("submitted_at"), received_at),
        source=source.name,
        person=person,
        properties=properties,
        campaign=hidden.get("utm_campaign"),
    )
    return HookMessage(message_id or key, event, "mapped")
