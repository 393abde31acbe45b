"""The one way a test waits for something to become true: ``eventually`` (``eventually_sync``
where the caller cannot await).

A test that waits polls a condition; a fixed short interval burns CPU the whole run shares (each
poll of an in-process test is a request through the whole app) and a long one adds latency. The
interval starts at 10 ms, so a condition that is almost there is seen at once, and doubles up to
250 ms, so a long wait (a container starting, a lease running out) costs a few polls a second.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio

T = TypeVar("T")

FIRST_POLL_SECONDS = 0.01
LONGEST_POLL_SECONDS = 0.25


def _delays() -> Iterator[float]:
    delay = FIRST_POLL_SECONDS
    while True:
        yield delay
        delay = min(delay * 2, LONGEST_POLL_SECONDS)


def _failure(what: str | Callable[[], str], timeout: float, answer: object) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"{described}: not true after {timeout} s (last answer: {answer!r})")


async def eventually(
    check: Callable[[], T | Awaitable[T | None] | None],
    what: str | Callable[[], str] = "the condition",
    *,
    timeout: float = 10.0,
) -> T:
    """``check()``'s first truthy answer (``check`` may be sync or async), polled with back-off.

    Fails after ``timeout`` seconds with ``what`` (a string, or a function called then, to say
    what was last seen) and ``check``'s last answer.
    """
    deadline = time.monotonic() + timeout
    for delay in _delays():
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer  # type: ignore[return-value]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(what, timeout, answer)
        await anyio.sleep(min(delay, remaining))
    raise AssertionError("unreachable")


def eventually_sync(
    check: Callable[[], T | None], what: str | Callable[[], str] = "the condition", *, timeout: float = 10.0
) -> T:
    """``eventually`` for code that cannot await: a synchronous test (sync Playwright) or fixture
    waiting for a process it started."""
    deadline = time.monotonic() + timeout
    for delay in _delays():
        answer = check()
        if answer:
            return answer
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(what, timeout, answer)
        time.sleep(min(delay, remaining))
    raise AssertionError("unreachable")
