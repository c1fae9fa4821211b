"""Metric logging: one JSON line per call (always) plus TensorBoard scalars when installed."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricLogger:
    """Append metrics to ``<run_dir>/metrics.jsonl`` and, optionally, TensorBoard.

    Args:
        run_dir: output folder.
        enabled: ``False`` on non-main processes (nothing is written).
        tensorboard: write TensorBoard events when ``torch.utils.tensorboard`` imports.
        filename: JSONL file name.
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        filename: str = "metrics.jsonl",
    ) -> None:
        self.path = Path(run_dir) / filename
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
                except Exception:  # tensorboard is optional: JSONL stays the source of truth
                    self._tb = None

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Record ``metrics`` at ``step``; returns the record written."""
        record = {"step": int(step), "time": time.time(), **{k: _scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
