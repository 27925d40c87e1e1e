"""A person's data: erasure (with suppression), export, and retention of raw events and
webhook response bodies. ``Privacy`` is what a running service (or a CLI command) holds."""

from app.privacy.service import Erasure, Privacy

__all__ = ["Erasure", "Privacy"]
