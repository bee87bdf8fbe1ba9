"""Agent counters: plain integers, a counter per close reason code."""

from __future__ import annotations

from collections import Counter

__all__ = ["AgentStats"]


class AgentStats:
    """Counters since start. ``as_dict()`` is what ``Agent.statistics()`` returns."""

    __slots__ = ("closed", "counters", "host_errors")

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        #: connections closed, per reason code ("peer_closed", "frame_too_long", ...)
        self.closed: Counter[str] = Counter()
        #: protocol misuse by the host, per kind ("data_unknown_conn", ...)
        self.host_errors: Counter[str] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def as_dict(self) -> dict[str, object]:
        return {
            **dict(self.counters),
            "closed": dict(self.closed),
            "host_errors": dict(self.host_errors),
        }
