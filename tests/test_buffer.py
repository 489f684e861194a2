"""Trajectory batches through Arrow and the replay buffer: round trip, byte bound with back-pressure,
staleness bound, and rejection of batches that are not trajectories."""

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from learner.buffer import BufferConfig, BufferFull, ReplayBuffer
from learner.trajectory import (TRAJECTORY_SCHEMA, StructureCache, TrajectoryError, check_batch, to_tensors,
                                trainable)
from policy.tokenizer import Vocabulary
from tests.rl_helpers import rollout_worker, tiny_policy


@pytest.fixture(scope="module")
def rollout():
    policy = tiny_policy()
    worker = rollout_worker(policy)
    batch, stats = worker.rollout(3, seed=11)
    return policy, worker, batch, stats


def with_version(batch: pa.RecordBatch, version: int) -> pa.RecordBatch:
    i = batch.schema.get_field_index("policy_version")
    return batch.set_column(i, TRAJECTORY_SCHEMA.field("policy_version"), pa.array([version] * batch.num_rows, pa.int64()))


def test_rollout_batch_round_trips_through_arrow_ipc_and_the_buffer(rollout, tmp_path):
    policy, _, batch, stats = rollout
    assert batch.num_rows == 12 == stats.trajectories
    check_batch(batch)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    reread = pa.ipc.open_stream(sink.getvalue()).read_all()
    buffer = ReplayBuffer()
    buffer.put(reread.to_batches()[0])
    table = buffer.take_all()
    assert len(buffer) == 0 and buffer.nbytes == 0
    assert table.schema.remove_metadata() == TRAJECTORY_SCHEMA
    assert table.column("tokens").to_pylist() == batch.column("tokens").to_pylist()
    t = to_tensors(table, StructureCache(Vocabulary.from_dict(policy.config.vocab)))
    # the stored behaviour log-probs are the policy's own (temperature 1) log-probs of the tokens
    with torch.no_grad():
        replayed = policy.log_probs(t.batch, t.image_tokens)
    assert torch.allclose(replayed, t.behaviour_logp, atol=2e-3)
    assert torch.equal(t.batch.token_masks.sum(-1)[t.batch.slot_mask],
                       torch.tensor(np.concatenate(table.column("valid_tokens").to_pylist()), dtype=torch.long))
    assert trainable(table).all()


def test_a_full_buffer_makes_producers_wait_and_never_drops(rollout):
    _, _, batch, _ = rollout
    buffer = ReplayBuffer(BufferConfig(max_bytes=int(batch.nbytes * 2.5)))
    buffer.put(batch)
    buffer.put(batch)
    with pytest.raises(BufferFull, match="was not stored"):
        buffer.put(batch, timeout_s=0.2)
    assert len(buffer) == 2 * batch.num_rows  # the rejected batch changed nothing

    stored = threading.Event()
    producer = threading.Thread(target=lambda: (buffer.put(batch, timeout_s=30), stored.set()))
    producer.start()
    time.sleep(0.3)
    assert not stored.is_set(), "the producer did not wait for room"
    taken = buffer.take(batch.num_rows)
    producer.join(10)
    assert stored.is_set() and taken.num_rows == batch.num_rows
    assert len(buffer) == 2 * batch.num_rows and buffer.nbytes <= buffer.config.max_bytes
    stats = buffer.stats()
    assert stats["put_waits"] == 1 and stats["rejected_full"] == 1
    assert stats["rows_in"] == stats["rows_out"] + stats["rows"]
    assert batch.nbytes > 1 << 16
    with pytest.raises(ValueError, match="can never fit"):
        ReplayBuffer(BufferConfig(max_bytes=1 << 16)).put(batch)


def test_async_take_never_returns_rows_older_than_the_staleness_bound(rollout):
    _, _, batch, _ = rollout
    buffer = ReplayBuffer()
    for version in (0, 1, 2, 3, 1):
        buffer.put(with_version(batch, version))
    rows = buffer.take(100, min_version=2)
    assert set(rows.column("policy_version").to_pylist()) == {2, 3}
    assert rows.num_rows == 2 * batch.num_rows
    assert buffer.stats()["dropped_stale"] == 3 * batch.num_rows
    assert len(buffer) == 0
    # a partial take keeps the rest, oldest first
    for version in (5, 6):
        buffer.put(with_version(batch, version))
    first = buffer.take(batch.num_rows + 2, min_version=5)
    assert first.column("policy_version").to_pylist() == [5] * batch.num_rows + [6, 6]
    assert len(buffer) == batch.num_rows - 2


def test_malformed_batches_are_refused_naming_the_problem(rollout):
    _, _, batch, _ = rollout
    with pytest.raises(TrajectoryError, match="missing column 'seed'"):
        ReplayBuffer().put(batch.drop_columns(["seed"]))
    k = batch.schema.get_field_index("reward")
    with pytest.raises(TrajectoryError, match="column 'reward' is float"):
        ReplayBuffer().put(batch.set_column(k, pa.field("reward", pa.float32(), nullable=False),
                                            batch.column("reward").cast(pa.float32())))
    i = batch.schema.get_field_index("tokens")
    too_big = pa.array([[200] * len(row) for row in batch.column("tokens").to_pylist()], pa.list_(pa.uint8()))
    with pytest.raises(TrajectoryError, match="not admitted"):
        ReplayBuffer().put(batch.set_column(i, TRAJECTORY_SCHEMA.field("tokens"), too_big))
    j = batch.schema.get_field_index("behaviour_logp")
    nan = pa.array([[float("nan")] * len(r) for r in batch.column("behaviour_logp").to_pylist()], pa.list_(pa.float32()))
    with pytest.raises(TrajectoryError, match="finite"):
        ReplayBuffer().put(batch.set_column(j, TRAJECTORY_SCHEMA.field("behaviour_logp"), nan))


def test_rollouts_are_deterministic_per_seed_and_carry_the_weights_version(rollout):
    policy, worker, batch, _ = rollout
    again, _ = worker.rollout(3, seed=11)
    assert again.column("tokens").to_pylist() == batch.column("tokens").to_pylist()
    assert again.column("reward").to_pylist() == batch.column("reward").to_pylist()
    other, _ = worker.rollout(3, seed=12)
    assert other.column("tokens").to_pylist() != batch.column("tokens").to_pylist()
    worker.set_weights(policy.state_dict(), 7)
    assert set(worker.rollout(1, seed=1)[0].column("policy_version").to_pylist()) == {7}
    worker.set_weights(policy.state_dict(), 0)
    result = worker.evaluate(worker.targets.fixed(2))
    assert len(result["rewards"]) == 2 and np.isfinite(result["reward_mean"])


def test_sampled_validation_is_deterministic_and_its_best_of_n_bounds_its_mean(rollout):
    """`evaluate(samples=N)`: N top-p draws per target with a fixed seed, so two calls on the same
    weights agree; top-1 of N is at least the mean of the N; the greedy part is unchanged."""
    _, worker, _, _ = rollout
    targets = worker.targets.fixed(2)
    greedy = worker.evaluate(targets)
    first, second = worker.evaluate(targets, samples=3), worker.evaluate(targets, samples=3)
    assert first["rewards"] == greedy["rewards"] and "sample_reward_mean" not in greedy
    assert first["sample_rewards"] == second["sample_rewards"]
    assert [len(row) for row in first["sample_rewards"]] == [3, 3]
    assert first["best_of_n_mean"] >= first["sample_reward_mean"]
    assert first["sample_reward_mean"] == pytest.approx(np.mean(first["sample_rewards"]))
    assert worker.evaluate(targets, seed=5, samples=3)["sample_rewards"] != first["sample_rewards"]
