"""Optional sampling profile of the service during a phase (``--profile``), with py-spy.

py-spy is not a project dependency: ``.venv/bin/pip install py-spy``. It attaches to
the running service by pid (no restart, no instrumentation) in non-blocking mode, so
the service is not paused while it is sampled; the figures of a profiled run are still
a little lower than those of a plain one.

Only samples that hold the GIL count (``--gil``): py-spy cannot tell aiosqlite's idle
worker threads (blocked in a C ``SimpleQueue.get``) from busy ones, which otherwise
swamp the profile. So the shares are shares of the service's *Python* time; SQLite's own
C code and fsync run without the GIL and show up only in the CPU and pipeline figures.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from pathlib import Path

from bench.procs import ROOT, Child, venv_bin

_FRAME_FILE = re.compile(r"^(?P<fn>.*?) \((?P<file>.*)\)$")

# Frames that say which stage of the service a sample belongs to, most specific first.
STAGES: tuple[tuple[str, str], ...] = (
    ("app/delivery/dispatcher.py", "webhook delivery (dispatcher)"),
    ("app/pipeline.py", "pipeline transaction"),
    ("app/runtime/batcher.py", "pipeline transaction"),
    ("app/api/events.py", "HTTP ingest route (parse, respond)"),
    ("app/ingest/native.py", "native format (validate)"),
    ("KafkaProducerIngest.", "Kafka produce (HTTP ingest → broker)"),
    ("app/ingest/kafka.py", "Kafka consumer (poll, decode, validate, commit)"),
    ("app/auth.py", "API key check"),
    ("fastapi/", "FastAPI / Starlette routing and serialisation"),
    ("starlette/", "FastAPI / Starlette routing and serialisation"),
    # Not just "uvicorn/": every stack of the event loop thread starts in uvicorn.run.
    ("uvicorn/protocols/", "uvicorn HTTP protocol"),
    ("aiokafka/", "aiokafka client (fetch, parse, send)"),
    ("aiosqlite/", "aiosqlite worker threads (rows to Python objects)"),
)


def available() -> bool:
    return venv_bin("py-spy").exists()


class Profiler:
    def __init__(self, pid: int, workdir: Path, name: str) -> None:
        self.output = workdir / f"profile-{name}.txt"
        self.child = Child(
            f"py-spy-{name}",
            [
                str(venv_bin("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--nolineno",
                "--nonblocking",
                "--gil",
                "--rate",
                "200",
                "--output",
                str(self.output),
            ],
            env=dict(os.environ),
            workdir=workdir,
        )

    async def stop(self) -> None:
        """Stop sampling; py-spy writes its output on SIGINT."""
        await asyncio.to_thread(self.child.stop, 20.0, signal.SIGINT)

    def report(self, top: int = 14) -> list[str]:
        try:
            text = self.output.read_text("utf-8", "replace")
        except OSError:
            return [f"(no profile written; py-spy said: {self.child.stderr_tail(5)!r})"]
        total = 0
        stages: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for raw in text.splitlines():
            stack, _, count_text = raw.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short(f) for f in stack.split(";")]
            own[frames[-1]] += count
            for f in set(frames):
                inclusive[f] += count
            stages[_stage(stack)] += count
        if not total:
            return ["(no samples)"]
        out = [f"{total} samples holding the GIL; by stage (innermost stage of each sample):"]
        out += [f"  {100 * c / total:5.1f}%  {s}" for s, c in stages.most_common()]
        out.append("functions by own time:")
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
        out.append("app functions by inclusive time:")
        app = [(f, c) for f, c in inclusive.most_common() if "(app/" in f][:top]
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in app]
        return out


def _short(frame: str) -> str:
    m = _FRAME_FILE.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('fn')} ({path})"


def _stage(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for needle, stage in STAGES:
            if needle in frame:
                return stage
    return "other (event loop, stdlib)"
