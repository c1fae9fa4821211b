"""Progress bars that degrade to periodic log lines when there is no terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("medlearn.progress")


class Progress:
    """Counts steps; a tqdm bar on a terminal, otherwise a log line every ``every_fraction`` of the total.

    Args:
        total: expected number of updates.
        desc: label.
        enabled: ``False`` silences it (non-main processes).
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True, every_fraction: float = 0.1) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n = 0
        self._bar = None
        self._next_log = 0
        self._every = max(1, int(total * every_fraction))
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.n >= self._next_log or self.n >= self.total:
            extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            log.info("%s %d/%d %s", self.desc, self.n, self.total, extra)
            self._next_log = self.n + self._every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress`."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    with Progress(total, desc, enabled) as bar:
        for item in items:
            yield item
            bar.update()
