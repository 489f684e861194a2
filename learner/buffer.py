"""The replay buffer: trajectory record batches held in memory, bounded by bytes, with back-pressure.

Producers (rollout workers) `put` Arrow record batches in `learner.trajectory.TRAJECTORY_SCHEMA`;
the learner takes them out:
  * on-policy (the paper's synchronous PPO): `take_all()` after every rollout phase empties it;
  * asynchronous: `take(rows, min_version)` drops every row sampled by a policy older than
    `min_version` first (counted in `dropped_stale`, never silently), then hands out the oldest
    rows.
A full buffer makes `put` wait until the learner has taken enough rows (back-pressure); after
`put_timeout_s` it raises `BufferFull`, so the producer knows its batch was not stored. Nothing is
ever dropped to make room.

`ReplayBuffer` is a plain thread-safe class; `ReplayBufferShell` is its Ray actor body (a threaded
actor, so a producer blocked in `put` does not block the learner's `take`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from learner.trajectory import check_batch


class BufferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(256 << 20, ge=1 << 16, description="bound on the Arrow bytes held")
    put_timeout_s: float = Field(600.0, gt=0, description="how long a producer waits for room")


class BufferFull(TimeoutError):
    """The buffer stayed full for the producer's whole timeout; the batch was not stored."""


class BufferClosed(RuntimeError):
    """The buffer was closed (the job is stopping) while a producer waited."""


class ReplayBuffer:
    """Trajectory batches in arrival order, at most `max_bytes` of Arrow buffers."""

    def __init__(self, config: BufferConfig = BufferConfig()):
        self.config = config
        self._batches: deque[pa.RecordBatch] = deque()
        self._bytes = 0
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self.counters = {"rows_in": 0, "rows_out": 0, "batches_in": 0, "dropped_stale": 0, "put_waits": 0,
                         "put_wait_s": 0.0, "rejected_full": 0}

    # ---- producers ----------------------------------------------------------------------------
    def put(self, batch: pa.RecordBatch, timeout_s: float | None = None) -> int:
        """Store a batch; waits while it does not fit. Returns the rows held afterwards."""
        check_batch(batch)
        size = batch.nbytes
        if size > self.config.max_bytes:
            raise ValueError(f"a batch of {size} bytes can never fit a buffer of max_bytes "
                             f"{self.config.max_bytes}; send smaller batches or raise buffer.max_bytes")
        timeout = self.config.put_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        with self._cond:
            waited = False
            start = time.monotonic()
            while self._bytes + size > self.config.max_bytes and not self._closed:
                waited = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.counters["rejected_full"] += 1
                    raise BufferFull(f"replay buffer full ({self._bytes} of {self.config.max_bytes} bytes) "
                                     f"for {timeout:g}s; the batch of {batch.num_rows} rows was not stored")
                self._cond.wait(remaining)
            if self._closed:
                raise BufferClosed("the replay buffer was closed")
            if waited:
                self.counters["put_waits"] += 1
                self.counters["put_wait_s"] += time.monotonic() - start
            self._batches.append(batch)
            self._bytes += size
            self._rows += batch.num_rows
            self.counters["rows_in"] += batch.num_rows
            self.counters["batches_in"] += 1
            self._cond.notify_all()
            return self._rows

    # ---- the learner --------------------------------------------------------------------------
    def take_all(self) -> pa.Table:
        """Every row, in arrival order; the buffer is empty afterwards (on-policy mode)."""
        with self._cond:
            batches = list(self._batches)
            self._batches.clear()
            self._bytes = self._rows = 0
            self.counters["rows_out"] += sum(b.num_rows for b in batches)
            self._cond.notify_all()
        return _table(batches)

    def take(self, max_rows: int, min_version: int | None = None) -> pa.Table:
        """Up to `max_rows` oldest rows whose policy version is >= `min_version` (older rows are
        dropped first and counted in `dropped_stale`)."""
        with self._cond:
            if min_version is not None:
                self._drop_older(min_version)
            out, need = [], max_rows
            while self._batches and need > 0:
                head = self._batches[0]
                if head.num_rows <= need:
                    self._batches.popleft()
                    out.append(head)
                    self._bytes -= head.nbytes
                else:
                    out.append(head.slice(0, need))
                    rest = head.slice(need)
                    self._batches[0] = rest
                    self._bytes -= head.nbytes - rest.nbytes
                need -= out[-1].num_rows
            taken = sum(b.num_rows for b in out)
            self._rows -= taken
            self.counters["rows_out"] += taken
            self._cond.notify_all()
        return _table(out)

    def drop_stale(self, min_version: int) -> int:
        with self._cond:
            dropped = self._drop_older(min_version)
            self._cond.notify_all()
            return dropped

    def _drop_older(self, min_version: int) -> int:
        kept, dropped = deque(), 0
        for batch in self._batches:
            versions = batch.column("policy_version")
            keep = pc.greater_equal(versions, pa.scalar(min_version, pa.int64()))
            fresh = batch.filter(keep)
            dropped += batch.num_rows - fresh.num_rows
            self._bytes -= batch.nbytes
            if fresh.num_rows:
                kept.append(fresh)
                self._bytes += fresh.nbytes
        self._batches = kept
        self._rows -= dropped
        self.counters["dropped_stale"] += dropped
        return dropped

    def wait_for_rows(self, rows: int, timeout_s: float) -> bool:
        """Block until at least `rows` rows are held (or the timeout passes); True if they are."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._rows < rows and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._rows >= rows

    def close(self) -> None:
        """Wake every waiting producer with BufferClosed; later puts fail the same way."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- reporting ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, float]:
        with self._cond:
            return {"rows": self._rows, "bytes": self._bytes, "batches": len(self._batches), **self.counters}


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    from learner.trajectory import TRAJECTORY_SCHEMA

    if not batches:
        return TRAJECTORY_SCHEMA.empty_table()
    return pa.Table.from_batches(batches).unify_dictionaries().combine_chunks()


class ReplayBufferShell:
    """Ray actor body (threaded: create with `max_concurrency` >= 2)."""

    def __init__(self, config: BufferConfig):
        self.buffer = ReplayBuffer(config)

    def put(self, batch: pa.RecordBatch, timeout_s: float | None = None) -> int:
        return self.buffer.put(batch, timeout_s)

    def take_all(self) -> pa.Table:
        return self.buffer.take_all()

    def take(self, max_rows: int, min_version: int | None = None) -> pa.Table:
        return self.buffer.take(max_rows, min_version)

    def drop_stale(self, min_version: int) -> int:
        return self.buffer.drop_stale(min_version)

    def wait_for_rows(self, rows: int, timeout_s: float) -> bool:
        return self.buffer.wait_for_rows(rows, timeout_s)

    def close(self) -> None:
        self.buffer.close()

    def stats(self) -> dict[str, float]:
        return self.buffer.stats()
