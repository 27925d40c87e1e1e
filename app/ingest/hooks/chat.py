"""Intercom notifications → native events.

Format: developers.intercom.com/docs/references/webhooks/webhook-models — the envelope
``{type: "notification_event", id: "notif_…", topic, app_id, created_at, data: {item}}``.
``contact.*.created`` items are contacts (``email``, ``name``, ``phone``, ``external_id``,
``custom_attributes``, ``location``); ``conversation.user.*`` items are conversations, whose
``source.author`` (``{type, id, name, email}``) started them and whose
``conversation_parts`` hold the replies.
"""

from __future__ import annotations

from typing import Any

from app.ingest.hooks.model import (
    ID_PREFIX,
    HookMessage,
    HookSource,
    as_dict,
    as_list,
    event_id,
    id_text,
    ignored,
    person_field,
    rejected,
    signal_of,
    when,
)
from app.ingest.hooks.person import Person, native_event

CONTACT_TOPICS = ("contact.lead.created", "contact.user.created")
CONVERSATION_TOPICS = ("conversation.user.created", "conversation.user.replied")
_PEOPLE = ("user", "lead", "contact")


def _author(conversation: dict[str, Any], topic: str) -> dict[str, Any]:
    """Who wrote: a reply's author (the last part a contact wrote), else whoever started
    the conversation, else its first contact (an id, no email)."""
    if topic == "conversation.user.replied":
        parts = as_list(as_dict(conversation.get("conversation_parts")).get("conversation_parts"))
        for part in reversed(parts):
            author = as_dict(as_dict(part).get("author"))
            if author.get("type") in _PEOPLE:
                return author
    author = as_dict(as_dict(conversation.get("source")).get("author"))
    if author.get("type") in _PEOPLE:
        return author
    legacy = as_dict(conversation.get("user"))  # API 1.x put the contact here
    if legacy:
        return legacy
    contacts = as_list(as_dict(conversation.get("contacts")).get("contacts"))
    return as_dict(contacts[0]) if contacts else {}


def _person(who: dict[str, Any]) -> Person:
    person = Person()
    person.offer("email", who.get("email"))
    person.offer("name", who.get("name"))
    person.offer("phone", who.get("phone"))
    # external_id is the customer's own user id (Segment's userId); the Intercom id
    # stitches a contact's later messages, so it is the anonymous id.
    person.offer("user_id", id_text(who.get("external_id")) or id_text(who.get("user_id")))
    intercom_id = id_text(who.get("id"))
    if intercom_id:
        person.offer("anonymous_id", f"intercom:{intercom_id}")
    location = as_dict(who.get("location"))
    person.offer("country", location.get("country_code") or location.get("country"))
    person.trait("city", location.get("city"))
    person.trait("region", location.get("region"))
    for key, value in as_dict(who.get("custom_attributes")).items():
        what = person_field(key)
        if what is not None:
            person.offer(what, value)
        else:
            person.trait(key, value)
    return person


def intercom(source: HookSource, payload: dict[str, Any], received_at: float) -> HookMessage:
    """A new contact or a contact's message is a chat message; ``ping`` and other topics
    are ignored."""
    notif_id = id_text(payload.get("id"))
    topic = payload.get("topic")
    if topic == "ping":
        return ignored(notif_id, "ping")
    if topic not in CONTACT_TOPICS + CONVERSATION_TOPICS:
        return ignored(notif_id, f'Intercom topic "{topic}" is not scored (topic)')
    if not notif_id:
        return rejected("", "no id (the notification's) in the body")
    item = as_dict(as_dict(payload.get("data")).get("item"))
    properties: dict[str, Any] = {"topic": topic}
    if topic in CONTACT_TOPICS:
        person = _person(item)
        properties["contact_role"] = item.get("role")
        where = "data.item (email, id)"
    else:
        person = _person(_author(item, topic))
        src = as_dict(item.get("source"))
        properties.update(conversation_id=item.get("id"), channel=src.get("type"))
        properties["url"] = src.get("url")  # the page the conversation started on
        where = "data.item.source.author and data.item.conversation_parts (email, id)"
    if not person.identified():
        return rejected(notif_id, f"no email or anonymous id in {where}")
    event = native_event(
        event_id=event_id(ID_PREFIX["intercom"], notif_id),
        type=signal_of(source) or "chat_message",
        occurred_at=when(payload.get("created_at"), received_at),
        source=source.name,
        person=person,
        properties=properties,
    )
    return HookMessage(notif_id, event, "mapped")
