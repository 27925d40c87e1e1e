"""Shared FastAPI dependencies for the API routes.

One unit of work per request, owned by the session dependency: the handler's session is
in a transaction that commits when the handler returns and rolls back when it raises.
Handlers never commit; what must wait for the commit (a cache to drop, the dispatcher to
wake) is handed to ``after_commit``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.policy.schema import CompiledPolicy
from app.runtime.service import Runtime

_AFTER_COMMIT = "after_commit"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work (committed before the response is sent)."""
    runtime: Runtime = request.app.state.runtime
    async with runtime.sessionmaker() as session:
        async with session.begin():
            yield session
        for action in session.info.pop(_AFTER_COMMIT, ()):
            done = action()
            if inspect.isawaitable(done):
                await done


def after_commit(session: AsyncSession, action: Callable[[], Awaitable[None] | None]) -> None:
    """Run ``action`` once the request's transaction has committed (never on rollback)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def get_policy(request: Request) -> CompiledPolicy:
    runtime: Runtime = request.app.state.runtime
    assert runtime.policy is not None
    return runtime.policy


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# scope="function": the commit happens before the response goes out, so a 2xx means durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
PolicyDep = Annotated[CompiledPolicy, Depends(get_policy)]
