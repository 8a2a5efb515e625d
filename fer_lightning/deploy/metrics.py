"""What a server has answered: requests by status, latency percentiles, the sizes of the batches it formed.

Examples:
    >>> m = ServeMetrics()
    >>> for seconds, batch in [(0.010, 1), (0.020, 2), (0.030, 2)]:
    ...     m.record(200, seconds, batch)
    >>> m.record(400, 0.001)
    >>> m.summary()["requests"], m.summary()["batches"]
    ({200: 3, 400: 1}, {1: 1, 2: 1})
    >>> print(m.text().splitlines()[2])
    fer_serve_requests_total{status="400"} 1
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import numpy as np

QUANTILES = (0.5, 0.95, 0.99)


class ServeMetrics:
    """Counts and latencies of the answered requests (the last ``window`` latencies of answered images).

    A batch of ``n`` images is counted once: each of its ``n`` answers adds ``1 / n`` to its size's count.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.requests: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=window)
        self._batch_shares: Counter[int] = Counter()

    def record(self, status: int, seconds: float, batch: int | None = None) -> None:
        """One answered request: its HTTP status, its time in the server and (an image answered) its batch size."""
        self.requests[int(status)] += 1
        if batch is not None:
            self.latencies.append(float(seconds))
            self._batch_shares[int(batch)] += 1

    def batches(self) -> dict[int, int]:
        """``{batch size: number of batches formed}``."""
        return {size: round(n / size) for size, n in sorted(self._batch_shares.items())}

    def percentiles(self) -> dict[float, float]:
        """Latency (seconds) at :data:`QUANTILES` of the answered images; empty before the first."""
        if not self.latencies:
            return {}
        return dict(zip(QUANTILES, np.percentile(np.fromiter(self.latencies, float), [q * 100 for q in QUANTILES]),
                        strict=True))

    def summary(self) -> dict[str, Any]:
        return {"requests": dict(sorted(self.requests.items())), "latency_seconds": self.percentiles(),
                "batches": self.batches()}

    def text(self) -> str:
        """The Prometheus text format."""
        lines = ["# TYPE fer_serve_requests_total counter"]
        lines += [f'fer_serve_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        lines.append("# TYPE fer_serve_latency_seconds summary")
        lines += [f'fer_serve_latency_seconds{{quantile="{q}"}} {v:.6f}' for q, v in self.percentiles().items()]
        lines.append(f"fer_serve_latency_seconds_count {len(self.latencies)}")
        lines.append("# TYPE fer_serve_batches_total counter")
        lines += [f'fer_serve_batches_total{{size="{s}"}} {n}' for s, n in self.batches().items()]
        return "\n".join(lines) + "\n"
