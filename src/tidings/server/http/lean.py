"""Lean stand-ins for the asyncio objects every open connection holds.

An asyncio.Event or Queue keeps its waiters in a `collections.deque`, whose first block
costs ~740 bytes even when empty; uvicorn gives each HTTP connection two such events and
a deque of pipelined requests, and each WebSocket a queue (three deques and an event) and
an event. With thousands of idle streams that is most of a subscriber's memory. These
keep the same behaviour on lists, which at the one or two items a connection ever holds
cost 56 bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["LeanEvent", "LeanQueue", "Line"]


class Line(list[Any]):
    """A list with the two deque methods asyncio and uvicorn use on these queues."""

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class LeanEvent(asyncio.Event):
    """asyncio.Event on a list of waiters."""

    def __init__(self, is_set: bool = False) -> None:
        self._waiters = Line()  # type: ignore[assignment]
        self._value = is_set


class LeanQueue(asyncio.Queue[Any]):
    """An unbounded asyncio.Queue on lists."""

    def __init__(self) -> None:
        super().__init__()
        self._getters = Line()
        self._putters = Line()
        self._finished = LeanEvent(is_set=True)

    def _init(self, maxsize: int) -> None:
        self._queue = Line()
