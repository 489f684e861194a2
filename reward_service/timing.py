"""Phase timings of a reward request that are true on a GPU as well as on a CPU.

CUDA work is asynchronous: a host clock read after launching a phase's kernels measures the
launches, not the work, and the time then shows up in whichever later phase first waits for the
GPU (on an H200 the worker's old timings charged most of the executor's time to the reward).
On CUDA the timer therefore records a CUDA event at every phase boundary and reads the intervals
once, after the request's last transfer has synchronised anyway: each phase gets the GPU timeline
between its boundaries, without stalling the pipeline to read a clock. Host-only work between two
boundaries (decoding, validation) is timed by the same events, which the idle GPU passes at once.
"""

from __future__ import annotations

import time

import torch

PHASES = ("decode", "validate", "execute", "render", "cnn", "terms")


class PhaseTimer:
    """Seconds per phase: `lap(phase)` charges the time since the previous lap (or the start) to `phase`."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._intervals: list[tuple[str, object, object]] = []
        self._host: dict[str, float] = {}
        self._mark = self._now()

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def lap(self, phase: str, carve: dict[str, float] | None = None) -> None:
        """End the current interval and charge it to `phase`; `carve` moves host-measured seconds
        of the interval to other phases (e.g. decoding interleaved with validation)."""
        now = self._now()
        if self.cuda:
            self._intervals.append((phase, self._mark, now))
        else:
            self._host[phase] = self._host.get(phase, 0.0) + (now - self._mark)
        for other, seconds in (carve or {}).items():
            self._host[other] = self._host.get(other, 0.0) + seconds
            self._host[phase] = self._host.get(phase, 0.0) - seconds
        self._mark = now

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far (on CUDA this waits for the last recorded boundary)."""
        out = dict(self._host)
        if self._intervals:
            self._intervals[-1][2].synchronize()
            for phase, begin, end in self._intervals:
                out[phase] = out.get(phase, 0.0) + begin.elapsed_time(end) / 1000.0
        return out
