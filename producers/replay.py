"""Replay an interaction log into Kafka in event-time order, as fast as possible or paced.

Why pacing: a stream consumer behaves differently when events trickle in (windows close on
watermarks, models are swapped while requests arrive) than when a whole dataset lands at once.
``--rate`` fixes events per second; ``--speedup`` keeps the log's own gaps, compressed by a factor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Producer

from asmg.data.log import InteractionLog
from asmg.events import encode_log
from producers.producer import DeliveryTracker, flush_or_raise, produce_all


@dataclass(frozen=True)
class Pacing:
    """At most one of ``rate`` (events/s) and ``speedup`` (event-time seconds per wall second)."""

    rate: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("give either a rate or a speedup, not both")
        for name, value in (("rate", self.rate), ("speedup", self.speedup)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    def offsets(self, index: np.ndarray, ts: np.ndarray, ts0: int) -> np.ndarray | None:
        """Wall-clock seconds after the start at which each event is due; None when unpaced."""
        if self.rate is not None:
            return index / self.rate
        if self.speedup is not None:
            return (ts - ts0) / self.speedup
        return None

    def describe(self) -> str:
        if self.rate is not None:
            return f"{self.rate:g} events/s"
        if self.speedup is not None:
            return f"{self.speedup:g}x event time"
        return "as fast as possible"


@dataclass(frozen=True)
class ReplayResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return f"{self.events:,} events in {self.seconds:.2f} s: {self.rate:,.0f} events/s"


def replay_log(log: InteractionLog, producer: Producer, topic: str, pacing: Pacing | None = None,
               start: int = 0, stop: int | None = None,
               on_progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Produce rows ``start:stop`` of ``log`` to ``topic`` (key = user id) and wait for every ack."""
    pacing = pacing or Pacing()
    stop = len(log.events) if stop is None else min(stop, len(log.events))
    if start >= stop:
        return ReplayResult(0, 0.0)
    ts0 = int(log.events["ts"].iloc[start])
    tracker = DeliveryTracker()
    began = time.monotonic()
    position = start
    for chunk in encode_log(log, start, stop):
        n = len(chunk.values)
        due = pacing.offsets(np.arange(position - start, position - start + n), chunk.ts, ts0)
        i = 0
        while i < n:
            if due is None:
                j = n
            else:
                now = time.monotonic() - began
                j = int(np.searchsorted(due, now, side="right"))
                if j <= i:
                    producer.poll(min(float(due[i]) - now, 0.05))
                    continue
            produce_all(producer, topic, chunk.keys[i:j], chunk.values[i:j], tracker)
            if on_progress is not None:
                on_progress(j - i)
            i = j
        position += n
    flush_or_raise(producer, tracker)
    return ReplayResult(events=stop - start, seconds=time.monotonic() - began)
