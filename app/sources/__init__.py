"""Sources: where events come from, as first-class objects.

A ``segment`` source has a write key (public by design, as Segment's are: it only lets
the holder send events as that source) and the browser origins allowed to use it; a
platform source (Google Ads lead forms, Calendly, Typeform, Intercom, or ``generic``)
has the secret its platform signs webhooks with. The source's name is the ``source`` of
every event it brings. ``registry`` owns the rows; ``debugger`` keeps each source's
recent messages and what became of them.
"""

from app.sources.debugger import Debugger, Outcome
from app.sources.registry import HOOK_KINDS, KINDS, Source, SourceStore

__all__ = ["HOOK_KINDS", "KINDS", "Debugger", "Outcome", "Source", "SourceStore"]
