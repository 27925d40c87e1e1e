"""The default policy that ships with the service."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def default_policy_text() -> str:
    return resources.files("app.policy").joinpath("default_policy.yaml").read_text("utf-8")


def default_policy_raw() -> dict[str, Any]:
    raw = yaml.safe_load(default_policy_text())
    assert isinstance(raw, dict)
    return raw
