"""Webhook body formats: the generic JSON contract as stored, or a Slack message built
from it at send time (pure: no DB, no web layer)."""

from __future__ import annotations

from typing import Any

import orjson

FORMATS = ("json", "slack")


def render(fmt: str, body: bytes) -> bytes:
    """The bytes to send to a destination of format ``fmt`` for the stored ``body``."""
    if fmt == "slack":
        return orjson.dumps(slack_message(orjson.loads(body)))
    return body


def _esc(value: Any) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cap(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback plus Block Kit ``blocks``)."""
    kind = payload.get("type", "")
    data: dict[str, Any] = payload.get("data") or {}
    if kind == "test.ping":
        text = f"intent-router test message for destination {data.get('name', '')}"
        return {"text": text, "blocks": [_section(_esc(text))]}
    lead = data.get("lead") or {}
    account = data.get("account") or {}
    score = data.get("score") or {}
    who = lead.get("email") or lead.get("lead_id")
    domain = account.get("domain")
    band = score.get("band") or "?"
    total = score.get("total")
    score_text = f"{total:.1f}" if isinstance(total, int | float) else "?"
    assignee = data.get("assignee") or "unassigned"
    team = data.get("team") or "?"
    if kind == "account.surge":
        title = f"Account surge: {domain}"
        text = (
            f"{domain} surged ({data.get('active_leads')} active leads) → team {team}, {assignee}"
        )
    else:
        title = f"{band.capitalize()} lead: {who}"
        text = f"{who} is {band} (score {score_text}) → team {team}, {assignee}"
    account_text = account.get("name") or domain or "none"
    if account.get("tier"):
        account_text += f" ({account['tier']})"
    signals = ", ".join(
        f"{s.get('signal')} {s.get('score', 0):.1f}"
        for s in [s for s in data.get("signals") or [] if s.get("score")][:3]
    )
    fields = [
        ("Lead", who or "none"),
        ("Account", account_text),
        ("Band", band),
        ("Score", score_text),
        ("Team", team),
        ("Assignee", assignee),
        ("Rule", data.get("rule") or "?"),
        ("Top signals", signals or "none"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cap(title, 150)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cap(f"*{name}*\n{_esc(value)}", 2000)}
                for name, value in fields
            ],
        },
        _section(_cap(_esc(data.get("reason") or ""), 3000) or " "),
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"decision {_esc(data.get('decision_id'))}"}],
        },
    ]
    return {"text": _cap(text, 3000), "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}
