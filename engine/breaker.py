"""Per-component circuit breakers: stop calling what keeps failing, probe it back later."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import metrics


@dataclass
class Breaker:
    """Open after ``threshold`` consecutive failures; allow one probe after ``cooldown`` s.

    States: closed (calls pass), open (calls skipped until the cooldown ends), half-open (one
    probe passes; success closes, failure re-opens for another cooldown). A breaker with a
    ``name`` keeps ``rankly_breaker_open{component=name}`` at 1 from opening to closing.
    """

    threshold: int = 5
    cooldown: float = 10.0
    clock: object = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = field(default=False)
    name: str | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing else "open"

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if not self.probing and self.clock() - self.opened_at >= self.cooldown:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        was_open = self.opened_at is not None
        self.failures = 0
        self.opened_at = None
        self.probing = False
        if was_open and self.name is not None:
            metrics.BREAKER_OPEN.labels(self.name).set(0)

    def release(self) -> None:
        """A call ended with no verdict (cancelled from outside, say by the request's own
        deadline): nothing is counted, and a probe gives its turn back, so the next call
        probes instead of the breaker staying half-open."""
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
            self.probing = False
            if self.name is not None:
                metrics.BREAKER_OPEN.labels(self.name).set(1)


class Breakers:
    """One breaker per component name, created on first use."""

    def __init__(self, threshold: int = 5, cooldown: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._by_name: dict[str, Breaker] = {}

    def __getitem__(self, name: str) -> Breaker:
        b = self._by_name.get(name)
        if b is None:
            b = self._by_name[name] = Breaker(self.threshold, self.cooldown, name=name)
        return b

    def success(self, name: str) -> None:
        """Record a success for ``name`` if it has a breaker (cheap: one dict lookup)."""
        b = self._by_name.get(name)
        if b is not None and (b.failures or b.opened_at is not None):
            b.success()

    def states(self) -> dict[str, str]:
        return {name: b.state for name, b in self._by_name.items()}
