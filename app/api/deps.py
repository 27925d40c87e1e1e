"""Shared FastAPI dependencies for the API routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.policy.schema import CompiledPolicy
from app.runtime.service import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    runtime: Runtime = request.app.state.runtime
    async with runtime.sessionmaker() as session:
        yield session


def get_policy(request: Request) -> CompiledPolicy:
    runtime: Runtime = request.app.state.runtime
    assert runtime.policy is not None
    return runtime.policy


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PolicyDep = Annotated[CompiledPolicy, Depends(get_policy)]
