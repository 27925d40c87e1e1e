from __future__ import annotations

from pathlib import Path

import yaml

from app.cli import openapi_yaml

SPEC = Path(__file__).resolve().parent.parent / "openapi.yaml"


def test_openapi_yaml_matches_the_app() -> None:
    """Regenerate with: .venv/bin/intent-router openapi > openapi.yaml"""
    assert SPEC.read_text("utf-8") == openapi_yaml()


def test_every_operation_has_a_stable_id_and_summary() -> None:
    spec = yaml.safe_load(SPEC.read_text("utf-8"))
    ids = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId"), f"{method} {path} has no operationId"
            assert op.get("summary"), f"{method} {path} has no summary"
            ids.append(op["operationId"])
    assert len(ids) == len(set(ids))
    assert {
        "ingestEvents",
        "getLead",
        "listLeads",
        "getAccount",
        "putPolicy",
        "createDestination",
        "getDecision",
        "segmentBatch",
    } <= set(ids)


def test_every_schema_reference_resolves() -> None:
    import re

    text = SPEC.read_text("utf-8")
    spec = yaml.safe_load(text)
    refs = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert refs and refs <= set(spec["components"]["schemas"])
