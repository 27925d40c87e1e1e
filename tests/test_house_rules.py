"""tools/check_imports.py finds each kind of breach of the house rules in a small tree.

(``make lint`` and ``make test`` run it on the real tree.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "check_imports.py"

CLEAN = {
    "app/__init__.py": "",
    "app/events.py": "class Event: ...\n",
    "app/db/__init__.py": "deliveries = None\n",
    "app/pipeline.py": "from app.events import Event\nfrom app.scoring import engine\n",
    "app/scoring/__init__.py": "",
    "app/scoring/engine.py": "from app.events import Event\n",
    "app/delivery/__init__.py": "",
    "app/delivery/lifecycle.py": (
        "from app.db import deliveries\n\n"
        "async def redeliver(session):\n"
        "    await session.execute(deliveries.update().values(status='pending'))\n"
    ),
    "app/api/__init__.py": "",
    "app/api/deps.py": (
        "async def get_session(maker):\n"
        "    async with maker() as session:\n"
        "        async with session.begin():\n"
        "            yield session\n"
    ),
    "app/api/leads.py": "from app.pipeline import Event\n",
    "app/main.py": "from app.api import leads\n",
}


def run(tree: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    for name, text in tree.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stderr


def test_a_tree_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    code, out = run(CLEAN, tmp_path)
    assert code == 0, out
    assert "0 against the flow" in out
    assert "delivery state written by app.delivery.lifecycle" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # a stage importing the pipeline that imports it: a circle and an upward import
        (
            {"app/scoring/engine.py": "from app.pipeline import Event\n"},
            "module circle: app.pipeline → app.scoring.engine",
        ),
        (
            {"app/scoring/engine.py": "def f():\n    from app import pipeline\n"},
            "against the flow: app.scoring.engine (scoring) imports app.pipeline (pipeline)",
        ),
        (
            {"app/scoring/engine.py": "from app.api.leads import Event\n"},
            "app.scoring.engine imports app.api.leads: only app.main mounts the API",
        ),
        (
            {
                "app/api/leads.py": (
                    "from app.db import deliveries\n\n"
                    "async def h(session):\n"
                    "    await session.execute(deliveries.delete())\n"
                )
            },
            "app.api.leads writes delivery state (1 statements)",
        ),
        (
            {"app/api/leads.py": "async def h(session):\n    await session.commit()\n"},
            "a route handler commits: app/api/leads.py:2",
        ),
        (
            {"app/events.py": "def f():\n" + "    x = 1\n" * 80},
            "app.events.f: 81 lines (at most 80)",
        ),
        (
            {"app/events.py": "x = 1\n" * 451},
            "app/events.py: 451 lines (at most 450)",
        ),
    ],
)
def test_each_breach_is_named(change: dict[str, str], expected: str, tmp_path: Path) -> None:
    code, out = run({**CLEAN, **change}, tmp_path)
    assert code == 1
    assert expected in out, out


def test_a_module_in_no_layer_stops_the_check(tmp_path: Path) -> None:
    code, out = run({**CLEAN, "app/gadgets.py": ""}, tmp_path)
    assert code != 0
    assert "app.gadgets: in no layer" in out
