"""The policy document: one versioned YAML/JSON document RevOps edits.

``parse_policy`` validates a document and returns either a ``PolicyDoc`` or a list of
errors, each naming the exact path (``routing.rules[2].when.band: unknown band "hott"``).
``CompiledPolicy`` is the runtime form the pipeline uses: conditions compiled to
closures, durations in seconds, lists as frozensets.

Every number is bounded so that nothing accepted can overflow later: points within
±``MAX_POINTS``, half-lives from a minute to ten years (an event up to five minutes ahead
then weighs at most 2⁵ times its points), cooldowns, windows and SLAs from a minute to a
year, score limits and band thresholds within 0–100.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from app.events import ATTRIBUTE_ONLY_TYPES
from app.policy.conditions import Condition, Context, compile_condition, getter

TIERS = ("tier_1", "tier_2", "tier_3")
FIT_MEMO_SIZE = 100_000
TIER_RANK = {"tier_1": 3, "tier_2": 2, "tier_3": 1}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
MINUTE = 60.0
YEAR = 365 * 86400.0
MAX_POINTS = 1000.0
MAX_COUNT = 1_000_000  # teams' daily caps, an account rule's active leads
MAX_NAME = 200  # characters of a band, rule, team or member name


def parse_duration(v: Any) -> float:
    """``"14d"``, ``"12h"``, ``"30m"``, ``"90s"`` or a number of seconds → seconds (> 0)."""
    if isinstance(v, bool):
        raise ValueError("a duration is a number of seconds or a string like 14d, 12h, 30m")
    if isinstance(v, int | float):
        seconds = float(v)
    elif isinstance(v, str) and (m := _DURATION.match(v)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {v!r}: use seconds or a string like 14d, 12h, 30m")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _human(seconds: float) -> str:
    for unit, size in (("year", YEAR), ("day", 86400.0), ("minute", MINUTE), ("second", 1)):
        if seconds >= size:
            n = seconds / size
            return f"{n:g} {unit}" + ("" if n == 1 else "s")
    return f"{seconds:g} seconds"


def _within(what: str, lo: float, hi: float) -> AfterValidator:
    def check(seconds: float) -> float:
        if seconds < lo:
            raise ValueError(f"{what} must be at least {_human(lo)}")
        if seconds > hi:
            raise ValueError(f"{what} must be at most {_human(hi)}")
        return seconds

    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
HalfLife = Annotated[Duration, _within("a half-life", MINUTE, 10 * YEAR)]
Span = Annotated[Duration, _within("a duration", MINUTE, YEAR)]  # cooldown, window, SLA
Points = Annotated[float, Field(ge=-MAX_POINTS, le=MAX_POINTS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Band(_Strict):
    name: Name
    min: float = Field(ge=0, le=100)
    # Hysteresis: once in this band a lead stays until its total falls below exit_below.
    exit_below: float | None = Field(default=None, ge=0, le=100)


class Scoring(_Strict):
    fit_max: float = Field(default=50, gt=0, le=100)
    intent_max: float = Field(default=50, gt=0, le=100)
    bands: list[Band] = Field(min_length=1, max_length=20)


class Signal(_Strict):
    points: Points
    half_life: HalfLife


class FitRule(_Strict):
    name: Name
    points: Points
    when: Condition


class Fit(_Strict):
    rules: list[FitRule] = []


class PageRule(_Strict):
    prefix: str
    signal: str


class SegmentMapping(_Strict):
    track: dict[str, str] = {}
    pages: list[PageRule] = []
    default_page: str | None = None


class CloudEventsMapping(_Strict):
    """CloudEvents ``type`` → signal, for producers whose types are their own
    (``com.acme.pricing.viewed``); a type not listed may name the signal itself."""

    types: dict[str, str] = {}


class RuleWhen(_Strict):
    band: str | list[str] | None = None
    tier: str | list[str] | None = None
    active_leads_gte: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    conditions: list[Condition] = []


class Sla(_Strict):
    """Sales must accept a decision of this rule within ``accept_within``; when they do
    not, the decision escalates to ``escalate_to`` and a ``lead.sla_missed`` webhook
    goes out."""

    accept_within: Span
    escalate_to: Literal["next_rep", "team_lead", "fallback_queue"] = "fallback_queue"


class RoutingRule(_Strict):
    name: Name
    kind: Literal["lead", "account"] = "lead"
    when: RuleWhen = RuleWhen()
    team: str
    assignment: Literal["account_owner", "round_robin", "fixed"] = "round_robin"
    assignee: str | None = None
    destinations: list[str] | None = None
    sla: Sla | None = None


class Surge(_Strict):
    active_lead_intent: float = Field(default=15, ge=0, le=MAX_POINTS)
    window: Span = 7 * 86400


class DefaultQueue(_Strict):
    team: str
    assignee: str | None = None


class Routing(_Strict):
    cooldown: Span = 86400
    route_bands: list[str] = ["hot"]
    surge: Surge = Surge()
    rules: list[RoutingRule] = []
    default_queue: DefaultQueue


class Team(_Strict):
    members: list[str] = []
    daily_cap: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    assignee: str | None = None  # who `fixed` assignment picks when the rule names nobody
    lead: str | None = None  # the team lead: where an SLA escalation to team_lead goes


class Feedback(_Strict):
    # Rejections with these reasons add the lead's email domain to the named list (a new
    # policy version), e.g. {competitor: competitors, student: students}. Off when empty.
    learn_from_rejections: dict[str, str] = {}
    rejection_reasons: list[str] = [
        "bad_fit",
        "no_authority",
        "no_budget",
        "wrong_market",
        "too_early",
        "unresponsive",
        "competitor",
        "student",
        "duplicate",
        "other",
    ]


class PolicyDoc(_Strict):
    scoring: Scoring
    signals: dict[str, Signal]
    fit: Fit = Fit()
    lists: dict[str, list[str]] = {}
    segment: SegmentMapping = SegmentMapping()
    cloudevents: CloudEventsMapping = CloudEventsMapping()
    routing: Routing
    teams: dict[str, Team] = {}
    feedback: Feedback = Feedback()


@dataclass(frozen=True)
class PolicyError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "list[str]", "list[Any]"):
            continue  # pydantic's union/validator branch labels are not document paths
        else:
            out += ("." if out else "") + part
    return out


def _cross_check(doc: PolicyDoc) -> list[PolicyError]:
    errors: list[PolicyError] = []
    bands = {b.name for b in doc.scoring.bands}
    if "cold" not in bands and not any(b.min == 0 for b in doc.scoring.bands):
        errors.append(PolicyError("scoring.bands", "one band must start at min 0"))
    if len(bands) != len(doc.scoring.bands):
        errors.append(PolicyError("scoring.bands", "band names must be unique"))
    for i, b in enumerate(doc.scoring.bands):
        if b.exit_below is not None and b.exit_below > b.min:
            errors.append(PolicyError(f"scoring.bands[{i}].exit_below", "must not exceed min"))
    for signal, spec in doc.signals.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", signal):
            errors.append(PolicyError(f"signals.{signal}", "signal names are lower_snake_case"))
        del spec

    def check_condition(cond: Condition, path: str) -> None:
        for sub, name in cond.list_names(path):
            if name not in doc.lists:
                errors.append(PolicyError(sub, f'unknown list "{name}"'))

    for i, fit_rule in enumerate(doc.fit.rules):
        check_condition(fit_rule.when, f"fit.rules[{i}].when")
    for name, signal in doc.segment.track.items():
        if signal not in doc.signals:
            errors.append(PolicyError(f"segment.track.{name}", f'unknown signal "{signal}"'))
    for i, page in enumerate(doc.segment.pages):
        if page.signal not in doc.signals:
            errors.append(
                PolicyError(f"segment.pages[{i}].signal", f'unknown signal "{page.signal}"')
            )
    for ce_type, signal in doc.cloudevents.types.items():
        if signal not in doc.signals and signal not in ATTRIBUTE_ONLY_TYPES:
            errors.append(PolicyError(f"cloudevents.types.{ce_type}", f'unknown signal "{signal}"'))
    if doc.segment.default_page and doc.segment.default_page not in doc.signals:
        errors.append(
            PolicyError("segment.default_page", f'unknown signal "{doc.segment.default_page}"')
        )
    for i, band in enumerate(doc.routing.route_bands):
        if band not in bands:
            errors.append(PolicyError(f"routing.route_bands[{i}]", f'unknown band "{band}"'))
    seen_rules: set[str] = set()
    for i, rule in enumerate(doc.routing.rules):
        base = f"routing.rules[{i}]"
        if rule.name in seen_rules:
            errors.append(PolicyError(f"{base}.name", f'duplicate rule name "{rule.name}"'))
        seen_rules.add(rule.name)
        for band in _as_list(rule.when.band):
            if band not in bands:
                errors.append(PolicyError(f"{base}.when.band", f'unknown band "{band}"'))
        for tier in _as_list(rule.when.tier):
            if tier not in (*TIERS, "none"):
                errors.append(
                    PolicyError(
                        f"{base}.when.tier",
                        f'unknown tier "{tier}" (use tier_1, tier_2, tier_3 or none)',
                    )
                )
        if rule.kind == "lead" and rule.when.active_leads_gte is not None:
            errors.append(
                PolicyError(f"{base}.when.active_leads_gte", "only account rules count leads")
            )
        if rule.kind == "account" and rule.when.band is not None:
            errors.append(PolicyError(f"{base}.when.band", "account rules do not have a band"))
        if rule.team not in doc.teams:
            errors.append(PolicyError(f"{base}.team", f'unknown team "{rule.team}"'))
        for j, cond in enumerate(rule.when.conditions):
            check_condition(cond, f"{base}.when.conditions[{j}]")
    if doc.routing.default_queue.team not in doc.teams:
        errors.append(
            PolicyError(
                "routing.default_queue.team", f'unknown team "{doc.routing.default_queue.team}"'
            )
        )
    return errors


def _as_list(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def parse_policy(raw: Any) -> tuple[PolicyDoc | None, list[PolicyError]]:
    """Validate a policy document; errors name the exact path of each problem."""
    if not isinstance(raw, Mapping):
        return None, [PolicyError("", "the policy must be a mapping (YAML or JSON object)")]
    try:
        doc = PolicyDoc.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            errors.append(PolicyError(_path(err["loc"]), msg))
        return None, errors
    errors = _cross_check(doc)
    return (None, errors) if errors else (doc, [])


FitPredicate = Callable[[Context], bool]


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """A signal's points and half-life, as the decay math reads them."""

    points: float
    half_life: float  # seconds


@dataclass(frozen=True)
class CompiledRule:
    rule: RoutingRule
    bands: frozenset[str] | None
    tiers: frozenset[str] | None
    conditions: tuple[FitPredicate, ...]


class CompiledPolicy:
    """The runtime form of one accepted policy version."""

    def __init__(self, version: int, doc: PolicyDoc) -> None:
        self.version = version
        self.doc = doc
        self.lists = {k: frozenset(v.lower() for v in vals) for k, vals in doc.lists.items()}
        self.signals = {k: SignalSpec(s.points, s.half_life) for k, s in doc.signals.items()}
        self.half_lives = {k: s.half_life for k, s in doc.signals.items()}
        self.fit_rules = [
            (r.name, r.points, compile_condition(r.when, self.lists)) for r in doc.fit.rules
        ]
        # Fit is a pure function of the few fields its rules read: memoised on their values
        # (many leads share a title pattern, an account, a country).
        self._fit_getters = [
            getter(path) for path in sorted(set().union(*(r.when.fields() for r in doc.fit.rules)))
        ]
        self._fit_memo: dict[tuple[Any, ...], tuple[float, list[tuple[str, float]]]] = {}
        self.fit_max = doc.scoring.fit_max
        self.intent_max = doc.scoring.intent_max
        # Highest band first so the first band whose min is reached wins.
        self.bands = sorted(doc.scoring.bands, key=lambda b: b.min, reverse=True)
        self.band_rank = {b.name: len(self.bands) - i for i, b in enumerate(self.bands)}
        self.band_by_name = {b.name: b for b in self.bands}
        self.route_bands = frozenset(doc.routing.route_bands)
        self.free_mail = self.lists.get("free_mail", frozenset())
        self.rules = [
            CompiledRule(
                rule=r,
                bands=frozenset(_as_list(r.when.band)) if r.when.band is not None else None,
                tiers=frozenset(_as_list(r.when.tier)) if r.when.tier is not None else None,
                conditions=tuple(compile_condition(c, self.lists) for c in r.when.conditions),
            )
            for r in doc.routing.rules
        ]

        # Bands a lead's rise into can route: the default queue's plus any lead rule's.
        lead_rules = [r for r in self.rules if r.rule.kind == "lead"]
        if any(r.bands is None for r in lead_rules):
            self.routable_bands = frozenset(self.band_rank)
        else:
            self.routable_bands = self.route_bands.union(*(r.bands or () for r in lead_rules))

    def band_for(self, total: float, previous: str | None) -> str:
        """The band for ``total``, with hysteresis relative to ``previous``."""
        candidate = self.bands[-1].name
        for band in self.bands:
            if total >= band.min:
                candidate = band.name
                break
        if previous is not None and previous in self.band_by_name:
            prev = self.band_by_name[previous]
            if self.band_rank[previous] > self.band_rank[candidate]:
                exit_below = prev.exit_below if prev.exit_below is not None else prev.min
                if total >= exit_below:
                    return previous
        return candidate

    def fit(self, ctx: Context) -> tuple[float, list[tuple[str, float]]]:
        """Clamped sum of matching fit rules, and the rules that matched."""
        key = tuple(get(ctx) for get in self._fit_getters)
        try:
            hit = self._fit_memo.get(key)
        except TypeError:  # an unhashable attribute value (a list in traits): no memo
            return self._fit(ctx)
        if hit is None:
            if len(self._fit_memo) >= FIT_MEMO_SIZE:
                self._fit_memo.clear()
            hit = self._fit_memo[key] = self._fit(ctx)
        return hit[0], list(hit[1])

    def _fit(self, ctx: Context) -> tuple[float, list[tuple[str, float]]]:
        matched = [(name, points) for name, points, pred in self.fit_rules if pred(ctx)]
        total = sum(p for _, p in matched)
        return max(0.0, min(self.fit_max, total)), matched

    def explain_fit(self, ctx: Context) -> list[tuple[str, float, bool]]:
        return [(name, points, pred(ctx)) for name, points, pred in self.fit_rules]

    def signal_for_segment_track(self, event_name: str) -> str | None:
        return self.doc.segment.track.get(event_name)

    def signal_for_cloudevents_type(self, ce_type: str) -> str | None:
        return self.doc.cloudevents.types.get(ce_type)

    def signal_for_page(self, path: str) -> str | None:
        for page in self.doc.segment.pages:
            if path.startswith(page.prefix):
                return page.signal
        return self.doc.segment.default_page
