"""Device-side accumulation: per-step scalars stay on the device; one transfer per epoch."""
from __future__ import annotations

import torch


class DeviceMeter:
    def __init__(self, trace_keys: tuple[str, ...] = ()):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.trace_keys = trace_keys
        self.traces: dict[str, list[torch.Tensor]] = {k: [] for k in trace_keys}

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
            if k in self.traces:
                self.traces[k].append(v)

    def read(self, reduce=None) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Means over steps, and the per-step traces; the only host transfer of the epoch.
        `reduce` (DDP: the mean over processes) is applied to the stacked values before it."""
        keys = list(self.sums)
        flat = [self.sums[k] for k in keys] + [t for k in self.trace_keys for t in self.traces[k]]
        values = (reduce or (lambda x: x))(torch.stack(flat)).tolist() if flat else []
        means = {k: values[i] / self.counts[k] for i, k in enumerate(keys)}
        traces, i = {}, len(keys)
        for k in self.trace_keys:
            traces[k] = values[i: i + len(self.traces[k])]
            i += len(self.traces[k])
        return means, traces
