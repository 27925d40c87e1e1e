"""Response models of the read API (wire models, separate from the tables)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.errors import error_responses

# 503: the database is unreachable (the key lookup or the query); retry after Retry-After.
ERRORS = error_responses(401, 403, 404, 422, 503)


class AccountRef(BaseModel):
    domain: str
    name: str | None = None
    tier: str | None = None
    owner: str | None = None
    territory: str | None = None


class Score(BaseModel):
    total: float
    fit: float
    intent: float
    band: str
    evaluated_at: str
    policy_version: int


class FitItem(BaseModel):
    rule: str
    points: float


class SignalItem(BaseModel):
    signal: str
    score: float


class DeliveryAttemptView(BaseModel):
    attempt: int
    started_at: str | None
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryView(BaseModel):
    id: str
    destination_id: str
    status: str
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: str | None
    history: list[DeliveryAttemptView] = []


class SlaView(BaseModel):
    due_at: str | None
    status: str = Field(description="pending, met or missed")


class DispositionView(BaseModel):
    id: str
    decision_id: str
    lead_id: str | None
    status: str
    reason: str | None
    note: str | None
    value: float | None
    crm_id: str | None
    created_at: str | None


class DeliverySummary(BaseModel):
    """A decision's webhooks at a glance; ``GET /v1/decisions/{id}`` shows each one's
    attempts, and the webhook body."""

    count: int = Field(description="webhooks for this decision: one per matching destination")
    statuses: dict[str, int] = Field(
        description="how many are pending, delivered, dead (gave up) or parked (destination "
        "disabled)"
    )
    attempts: int = Field(description="send attempts, over all of them")
    last_delivered_at: str | None = Field(description="when the latest one was delivered")


class DecisionSummary(BaseModel):
    """A decision as lists show it: its webhooks summarised."""

    id: str
    type: str
    lead_id: str | None
    account_domain: str | None
    rule: str
    team: str
    assignee: str | None
    band: str | None
    tier: str | None
    reason: str
    policy_version: int
    trigger_event_id: str | None
    event_received_at: str | None
    created_at: str | None
    crm_id: str | None = None
    disposition: str | None = Field(
        default=None, description="the latest: accepted, rejected, opportunity, won or lost"
    )
    accepted_at: str | None = None
    sla: SlaView | None = None
    dispositions: list[DispositionView] = []
    delivery: DeliverySummary


class DecisionView(DecisionSummary):
    """One decision in full: the webhook body and every delivery with its attempts."""

    payload: dict[str, Any] = Field(
        description="the webhook body, as delivered. Its data explains the decision in full: "
        "signals (every signal's points, half_life in seconds, decayed_count and contribution "
        "`score` at score.evaluated_at, largest first), fit_breakdown (every fit rule with "
        "matched, its rule_points and what it contributed, then the clamp to 0–fit_max if "
        "any) and rules_evaluated (the routing rules tried before the one that won, each "
        "with the first condition it failed: field, op, expected, actual)"
    )
    deliveries: list[DeliveryView]


class LeadView(BaseModel):
    lead_id: str
    email: str | None
    anonymous_ids: list[str]
    attributes: dict[str, Any]
    source: str | None
    first_seen_at: str | None
    last_event_at: str | None
    account: AccountRef | None
    score: Score
    fit_breakdown: list[FitItem]
    intent_breakdown: list[SignalItem]
    decisions: list[DecisionSummary]


class LeadSummary(BaseModel):
    lead_id: str
    email: str | None
    account_domain: str | None
    score: Score


class LeadList(BaseModel):
    leads: list[LeadSummary]
    next_cursor: str | None


class AccountView(BaseModel):
    domain: str
    name: str | None
    tier: str | None
    owner: str | None
    territory: str | None
    industry: str | None
    employees: int | None
    country: str | None
    annual_revenue: float | None
    attributes: dict[str, Any]
    intent: float
    intent_breakdown: list[SignalItem]
    fit: float
    fit_breakdown: list[FitItem]
    active_leads: int
    leads: list[LeadSummary]
    decisions: list[DecisionSummary]
    evaluated_at: str
    policy_version: int


class DecisionList(BaseModel):
    decisions: list[DecisionSummary]
    next_cursor: str | None
