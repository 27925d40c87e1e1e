"""The default policy that ships with the service."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from app.policy.bounded import load_yaml


@cache
def default_policy_text() -> str:
    return resources.files("app.policy").joinpath("default_policy.yaml").read_text("utf-8")


def default_policy_raw() -> dict[str, Any]:
    raw = load_yaml(default_policy_text())  # held to the bounds of an upload
    assert isinstance(raw, dict)
    return raw
