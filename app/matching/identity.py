"""Identity resolution and stitching, and lead → account matching, over one batch.

Identifiers: the normalised email (which *is* the lead id of an email lead),
``user:<id>`` (Segment userId, CRM id) and ``anon:<id>`` (cookie, chat visitor).
When an event carries identifiers that point at different leads, the weaker leads
(anonymous, user-id only) merge into the strongest one; two email leads never merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import identities
from app.db.bulk import Bulk
from app.events import ATTRIBUTE_ONLY_TYPES, Event, email_domain
from app.policy.schema import CompiledPolicy
from app.scoring.decay import Accumulators, merge_all
from app.scoring.state import (
    AccountState,
    LeadState,
    load_accounts,
    load_leads,
    save_accounts,
    save_leads,
)


@dataclass
class BatchState:
    """Every lead, account and identity a batch touches, loaded set-based up front."""

    policy: CompiledPolicy
    now: float
    batch_id: int | None = None  # the recorded batch (``batches``) this state applies
    leads: dict[str, LeadState] = field(default_factory=dict)
    accounts: dict[str, AccountState] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)
    new_identities: dict[str, str] = field(default_factory=dict)
    remaps: list[tuple[str, str]] = field(default_factory=list)
    # Signals of each lead as loaded, to count an account's active leads before the batch.
    base_signals: dict[str, tuple[str | None, Accumulators, float]] = field(default_factory=dict)
    # The latest event seen per account in this batch: what triggers an account surge.
    account_trigger: dict[str, Event] = field(default_factory=dict)

    # -- loading -------------------------------------------------------------------------
    async def load(self, session: AsyncSession, batch: list[Event]) -> None:
        weak = sorted(
            {k for ev in batch for k in ev.identifiers() if k.startswith(("anon:", "user:"))}
        )
        bulk = await Bulk.of(session)
        rows = await bulk.select_in(identities, ("identifier", "lead_id"), "identifier", weak)
        self.identity.update({r[0]: r[1] for r in rows})
        lead_ids = {ev.email for ev in batch if ev.email} | set(self.identity.values())
        self.leads = await load_leads(session, lead_ids)
        # Defensive: follow a merge that an identity row did not record.
        followups = {s.merged_into for s in self.leads.values() if s.merged_into} - set(self.leads)
        if followups:
            self.leads.update(await load_leads(session, followups))
        for lead in self.leads.values():
            self.base_signals[lead.lead_id] = (
                lead.account_domain,
                dict(lead.signals),
                lead.last_event_at,
            )
        domains = {ev.account_domain for ev in batch if ev.account_domain}
        domains |= {d for ev in batch if (d := email_domain(ev.email))}
        domains |= {s.account_domain for s in self.leads.values() if s.account_domain}
        self.accounts = await load_accounts(session, domains)

    async def save(self, session: AsyncSession) -> None:
        await save_leads(session, self.leads.values())
        await save_accounts(session, self.accounts.values())
        bulk = await Bulk.of(session)
        if self.new_identities:
            await bulk.upsert(
                identities,
                ("identifier", "lead_id"),
                ("identifier",),
                list(self.new_identities.items()),
            )
        # Identities of a merged lead that this batch did not load follow it too.
        await bulk.update_where(identities, "lead_id", self.remaps)

    # -- accounts ------------------------------------------------------------------------
    def account(self, domain: str) -> AccountState:
        acct = self.accounts.get(domain)
        if acct is None:
            acct = AccountState(domain=domain, updated_at=self.now, dirty=True)
            self.accounts[domain] = acct
        return acct

    def _shift_signals(self, signals: Accumulators, domain: str | None, sign: float) -> None:
        if domain is None or not signals:
            return
        acct = self.account(domain)
        moved = {k: (sign * v, t) for k, v, t in ((k, a[0], a[1]) for k, a in signals.items())}
        acct.signals = merge_all(acct.signals, moved, self.policy.half_lives)
        acct.dirty = True

    def attach(self, lead: LeadState, domain: str | None) -> None:
        """Make ``domain`` the lead's account, moving its intent from the old account."""
        if domain == lead.account_domain:
            return
        self._shift_signals(lead.signals, lead.account_domain, -1.0)
        self._shift_signals(lead.signals, domain, 1.0)
        lead.account_domain = domain
        lead.dirty = True

    def account_domain_for(self, ev: Event, lead: LeadState) -> str | None:
        """Email domain (never free-mail), else the event's account.domain, else as before."""
        free = self.policy.free_mail
        d = email_domain(lead.email)
        if d and d not in free:
            return d
        if ev.account_domain and ev.account_domain not in free:
            return ev.account_domain
        return lead.account_domain

    # -- leads ---------------------------------------------------------------------------
    def _new_lead(self, lead_id: str, email: str | None, ev: Event) -> LeadState:
        lead = LeadState(
            lead_id=lead_id,
            email=email,
            account_domain=None,
            attributes={},
            signals={},
            fit=0.0,
            intent=0.0,
            band=self.policy.bands[-1].name,
            band_at=self.now,
            policy_version=self.policy.version,
            source=ev.source,
            first_seen_at=ev.occurred_at,
            last_event_at=ev.occurred_at,
            updated_at=self.now,
            dirty=True,
            is_new=True,
        )
        self.leads[lead_id] = lead
        return lead

    def _merge(self, src: LeadState, dst: LeadState) -> None:
        """Fold ``src``'s history into ``dst``: accumulators add, the account follows ``dst``."""
        self._shift_signals(src.signals, src.account_domain, -1.0)
        self._shift_signals(src.signals, dst.account_domain, 1.0)
        dst.signals = merge_all(dst.signals, src.signals, self.policy.half_lives)
        dst.attributes = {**src.attributes, **dst.attributes}
        if src.first_seen_at < dst.first_seen_at:
            dst.first_seen_at = src.first_seen_at
            dst.source = src.source
        dst.last_event_at = max(dst.last_event_at, src.last_event_at)
        if src.last_decision_at and (dst.last_decision_at or 0) < src.last_decision_at:
            dst.last_decision_at = src.last_decision_at
            dst.last_decision_band = src.last_decision_band
            dst.last_decision_tier = src.last_decision_tier
        src.signals = {}
        src.merged_into = dst.lead_id
        src.account_domain = None
        src.updated_at = dst.updated_at = self.now
        src.dirty = dst.dirty = True
        self.remaps.append((src.lead_id, dst.lead_id))
        for key, target in list(self.identity.items()):
            if target == src.lead_id:
                self.identity[key] = dst.lead_id
                self.new_identities[key] = dst.lead_id

    def resolve(self, ev: Event) -> LeadState:
        """The lead this event is about, creating and stitching as needed."""
        found: list[LeadState] = []
        for key in ev.identifiers():
            lead_id = key if key == ev.email else self.identity.get(key)
            lead = self.leads.get(lead_id) if lead_id else None
            while lead is not None and lead.merged_into:
                lead = self.leads.get(lead.merged_into)
            if lead is not None and lead not in found:
                found.append(lead)
        if ev.email:
            target = self.leads.get(ev.email) or self._new_lead(ev.email, ev.email, ev)
            # An email lead exists already: attach it to its account before merging into it.
            self.attach(target, self.account_domain_for(ev, target))
        elif found:
            target = found[0]
        else:
            key = ev.identifiers()[0]
            target = self._new_lead(key, None, ev)
        for other in found:
            if other is not target and other.email is None:
                self._merge(other, target)
        for key in ev.identifiers():
            if key != ev.email and key not in self.identity:
                self.identity[key] = target.lead_id
                self.new_identities[key] = target.lead_id
        return target

    def identify(self, ev: Event) -> Identified:
        """The event's lead (resolved, stitched, attached to its account) and account, with
        the attributes the event carries applied to both."""
        lead = self.resolve(ev)
        self.attach(lead, self.account_domain_for(ev, lead))
        attrs_changed = False
        for key, value in ev.lead_attrs.items():
            if lead.attributes.get(key) != value:
                lead.attributes[key] = value
                attrs_changed = True
        # Free-mail domains never form an account, whatever the event says of them.
        if (
            ev.account_domain
            and ev.account_attrs
            and ev.account_domain not in self.policy.free_mail
        ):
            described = self.account(ev.account_domain)
            if described.update(ev.account_attrs):
                described.updated_at = self.now
                described.rev += 1
                described.dirty = True
        account = self.account(lead.account_domain) if lead.account_domain else None
        if account is not None and ev.type not in ATTRIBUTE_ONLY_TYPES:
            self.account_trigger[account.domain] = ev
        return Identified(lead, account, attrs_changed)


@dataclass(frozen=True, slots=True)
class Identified:
    """Who an event is about, once identified."""

    lead: LeadState
    account: AccountState | None
    attrs_changed: bool  # the event changed the lead's own attributes
