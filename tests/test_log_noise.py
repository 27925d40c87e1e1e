"""A broker outage is a few log lines, not hundreds; stopping without a broker is clean."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest

from app.ingest.kafka import _stop_quietly
from app.observability.logging import JsonFormatter, RepeatFilter


def _handler(window: float) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(window=window))
    return handler, stream


def _record(name: str, msg: str, created: float, level: int = logging.ERROR) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": name, "msg": msg, "levelno": level})
    record.levelname = logging.getLevelName(level)
    record.created = created
    return record


def test_repeats_of_one_kind_pass_once_per_window_and_say_how_many_were_held() -> None:
    handler, stream = _handler(window=60)
    t = 1000.0
    # What aiokafka logs with the broker down: the same failure with changing numbers.
    for i in range(300):
        handler.handle(
            _record(
                "aiokafka", f"Unable connect to node with id 1: [Errno {i}] refused", t + i / 10
            )
        )
    handler.handle(_record("aiokafka", "Unable to update metadata from [1]", t + 1))
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == [
        "Unable connect to node with id 1: [Errno 0] refused",
        "Unable to update metadata from [1]",
    ]
    handler.handle(
        _record("aiokafka", "Unable connect to node with id 1: [Errno 9] refused", t + 61)
    )
    last = orjson.loads(stream.getvalue().splitlines()[-1])
    assert last["repeated"] == 299


def test_only_the_named_libraries_are_held_back() -> None:
    handler, stream = _handler(window=60)
    for i in range(5):
        handler.handle(_record("app.delivery", "webhook failed: http_503", 1000.0 + i))
    assert len(stream.getvalue().splitlines()) == 5


def test_the_same_text_at_another_level_is_another_kind() -> None:
    handler, stream = _handler(window=60)
    handler.handle(_record("aiokafka", "node 1 down", 1000.0, logging.WARNING))
    handler.handle(_record("aiokafka", "node 1 down", 1000.5, logging.ERROR))
    assert len(stream.getvalue().splitlines()) == 2


async def test_a_cancellation_from_inside_a_client_stop_is_absorbed() -> None:
    """aiokafka's fetcher lets its own task's CancelledError out of stop() when the
    broker is gone; that must not fail our shutdown."""

    async def stop_that_leaks_a_cancellation() -> None:
        inner = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        inner.cancel()
        await inner  # raises CancelledError here, though nobody cancelled us

    await _stop_quietly(stop_that_leaks_a_cancellation)


async def test_a_cancellation_of_our_own_task_still_propagates() -> None:
    started = asyncio.Event()

    async def slow_stop() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(_stop_quietly(slow_stop))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
