"""Child processes (the service, the receiver, py-spy): start, watch, measure, stop.

Each child runs in its own session so that Ctrl-C reaches only the bench, which then
stops them in order; ``stop_all`` is also called from a plain ``finally`` as a last
resort. Output goes to files in the run's temporary directory, so a chatty child can
never block on a full pipe and its stderr can be shown when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"\b(ir_[A-Za-z0-9_\-]{20,})")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[Child] = []


class ChildError(RuntimeError):
    """A child did not come up or died; the message carries its output."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> Path:
    """A console script next to the running interpreter (``.venv/bin``), else in ROOT/.venv."""
    here = Path(sys.executable).parent / name
    return here if here.exists() else ROOT / ".venv" / "bin" / name


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process (all its threads), or of one of its threads, from
    /proc; 0 when unavailable."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Child:
    def __init__(
        self,
        name: str,
        argv: list[str | Path],
        *,
        env: dict[str, str],
        workdir: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        _children.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            text = self.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ensure_alive(self) -> None:
        if not self.alive():
            raise self.failure("died while the bench was running")

    def failure(self, what: str) -> ChildError:
        rc = self.proc.poll()
        state = f"exited with code {rc}" if rc is not None else "still running"
        return ChildError(
            f"{self.name} {what} ({state}).\n--- {self.name} stderr (tail) ---\n"
            f"{self.stderr_tail() or '(empty)'}\n--- {self.name} stdout ---\n"
            f"{self.stdout()[-3000:] or '(empty)'}"
        )

    async def wait_for_stdout(
        self, pattern: re.Pattern[str], what: str, within: float
    ) -> re.Match[str]:
        """Poll the child's stdout for ``pattern`` (``what`` names it in errors)."""
        deadline = time.monotonic() + within
        while True:
            m = pattern.search(self.stdout())
            if m:
                return m
            if not self.alive():
                raise self.failure(f"exited before printing {what}")
            if time.monotonic() > deadline:
                raise self.failure(f"printed no {what} within {within:.0f} s")
            await asyncio.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask politely, then kill; returns the exit code."""
        if self.alive():
            self.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        with contextlib.suppress(ValueError):
            _children.remove(self)
        return self.proc.poll()


def find_child(prefix: str) -> Child | None:
    """The newest running-or-not child whose name starts with ``prefix``."""
    return next((c for c in reversed(_children) if c.name.startswith(prefix)), None)


def stop_all() -> None:
    """Stop every child still running, newest first."""
    for child in reversed(list(_children)):
        child.stop(grace=5.0)


async def wait_http_ok(url: str, child: Child, within: float) -> None:
    """Poll ``url`` until it answers 200, failing fast if ``child`` dies."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if not child.alive():
                raise child.failure(f"exited while waiting for {url}")
            try:
                r = await client.get(url)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            if time.monotonic() > deadline:
                raise child.failure(f"was not ready at {url} within {within:.0f} s ({last})")
            await asyncio.sleep(0.1)
