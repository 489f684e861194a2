"""RewardWorker: batches score, bad samples fail alone with a named culprit, timeouts, caches, bad targets."""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from graph_executor.executor import execute
from graph_executor.ir import loads_graph
from graph_executor.render import render_flash
from reward_service.config import RewardConfig
from reward_service.worker import RequestError, RewardWorker, ScoreRequest

GRAPH = json.dumps({"format": "matrl.graph/1", "name": "w", "nodes": {
    "n1": {"type": "perlin_fbm", "params": {"scale": 4}},
    "lv": {"type": "levels", "inputs": {"in": "n1"}},
    "nrm": {"type": "normal_from_height", "inputs": {"height": "lv"}},
    "out": {"type": "output", "inputs": {"basecolor": "lv", "normal": "nrm", "roughness": "n1"}}}})


@pytest.fixture(scope="module")
def worker():
    return RewardWorker(RewardConfig(res=64, micro_batch=2))


@pytest.fixture(scope="module")
def target():
    """The graph's own render at seed 0 (HxWx3 uint8), so its default sample should score ~1."""
    image = render_flash(execute(loads_graph(GRAPH), res=64, seed=0))[0]
    return (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_batch_of_good_samples_scores(worker, target):
    sets = [{}, {"n1": {"scale": 9}}, {"lv": {"gamma": 2.5}}, {"n1": {"octaves": 2}}]
    results = worker.score(ScoreRequest(GRAPH, [0, 0, 0, 0], target, param_sets=sets, request_id="r1"))
    assert [r.ok for r in results] == [True] * 4
    assert results[0].reward == pytest.approx(1.0, abs=0.02)  # its own render (up to uint8 rounding)
    assert all(r.reward < results[0].reward for r in results[1:])
    assert all(set(r.terms) == {"gram", "lab"} and r.error == "" for r in results)
    assert {"execute", "render", "reward", "total"} <= set(results[0].timings)
    singles = [worker.score(ScoreRequest(GRAPH, [0], target, param_sets=[s]))[0].reward for s in sets]
    assert [r.reward for r in results] == pytest.approx(singles, abs=1e-4)  # batching changes nothing


def test_nan_parameter_fails_alone_and_names_the_culprit(worker, target):
    sets = [{}, {"lv": {"gamma": float("nan")}}, {"n1": {"scale": 6}}, {"nope": {"x": 1}}, {"n1": {"scale": 999}}]
    results = worker.score(ScoreRequest(GRAPH, [0, 1, 2, 3, 4], target, param_sets=sets))
    assert [r.ok for r in results] == [True, False, True, False, False]
    assert "'lv'" in results[1].error and "'gamma'" in results[1].error
    assert "nope" in results[3].error
    assert "'n1'" in results[4].error and "'scale'" in results[4].error
    assert all(r.reward == worker.config.failure_reward for r in results if not r.ok)
    assert all(math.isfinite(r.reward) and r.reward > worker.config.failure_reward for r in results if r.ok)


def test_bad_structure_fails_every_sample_and_worker_keeps_serving(worker, target):
    results = worker.score(ScoreRequest('{"nodes": {"a": {"type": "no_such_type"}}}', [0, 1], target,
                                        param_sets=[{}, {}]))
    assert [r.ok for r in results] == [False, False]
    assert "no_such_type" in results[0].error
    assert worker.score(ScoreRequest(GRAPH, [0], target, param_sets=[{}]))[0].ok


def test_timeout_gives_failure_results_and_worker_keeps_serving(worker, target):
    before = worker.stats()["timeouts"]
    results = worker.score(ScoreRequest(GRAPH, [0, 1, 2], target, param_sets=[{}, {}, {}], timeout_s=1e-9))
    assert [r.ok for r in results] == [False] * 3
    assert all(r.error.startswith("timeout") and r.reward == worker.config.failure_reward for r in results)
    assert worker.stats()["timeouts"] == before + 3
    assert [r.ok for r in worker.score(ScoreRequest(GRAPH, [0, 1], target, param_sets=[{}, {}]))] == [True, True]


def test_caches_hit_on_second_call(target):
    worker = RewardWorker(RewardConfig(res=64))
    request = ScoreRequest(GRAPH, [0], target, param_sets=[{}])
    first = worker.score(request)[0].reward
    stats = worker.stats()
    assert (stats["plan_cache_misses"], stats["plan_cache_hits"]) == (1, 0)
    assert (stats["target_cache_misses"], stats["target_cache_hits"]) == (1, 0)
    assert worker.score(request)[0].reward == first
    stats = worker.stats()
    assert (stats["plan_cache_misses"], stats["plan_cache_hits"]) == (1, 1)
    assert (stats["target_cache_misses"], stats["target_cache_hits"]) == (1, 1)
    worker.score(ScoreRequest(GRAPH, [0], png_bytes(target), param_sets=[{}]))
    worker.score(ScoreRequest(GRAPH, [0], png_bytes(target), param_sets=[{}]))
    assert worker.stats()["target_cache_hits"] == 2


def test_target_forms_agree(worker, target):
    worker.put_target("own", target)
    rewards = [worker.score(ScoreRequest(GRAPH, [0], t, param_sets=[{"n1": {"scale": 7}}]))[0].reward
               for t in (target, png_bytes(target), "own", target.astype(np.float32) / 255,
                         torch.from_numpy(target), np.concatenate([target, np.full_like(target[..., :1], 255)], 2))]
    assert rewards == pytest.approx([rewards[0]] * len(rewards), abs=1e-5)


@pytest.mark.parametrize("bad, message", [
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "PNG truncated"),
    (b"", "not a PNG or JPEG image"),
    ("unknown-key", "unknown target key"),
    (np.zeros((8, 8, 3), np.uint8), "outside"),
    (np.zeros((64, 64, 2), np.uint8), "shape"),
    (np.full((64, 64, 3), 2.0, np.float32), "[0,1]"),
    (np.full((64, 64, 3), 17, np.uint8), "blank"),
    (12, "expected"),
])
def test_bad_targets_raise_a_clear_request_error(worker, bad, message):
    with pytest.raises(RequestError, match="target") as err:
        worker.score(ScoreRequest(GRAPH, [0], bad, param_sets=[{}]))
    assert message in str(err.value)


def test_oversized_target_is_rejected(target):
    worker = RewardWorker(RewardConfig(res=64, max_target_side=48))
    with pytest.raises(RequestError, match="max_target_side"):
        worker.score(ScoreRequest(GRAPH, [0], png_bytes(target), param_sets=[{}]))


def test_malformed_requests_raise(worker, target):
    with pytest.raises(RequestError, match="seeds"):
        worker.score(ScoreRequest(GRAPH, [0, 1], target, param_sets=[{}]))
    with pytest.raises(RequestError, match="exactly one"):
        worker.score(ScoreRequest(GRAPH, [0], target))


def test_tokens_are_decoded_with_the_graph_tokenizer(worker, target):
    from policy.tokenizer import GraphTokenizer
    tokenizer = GraphTokenizer(loads_graph(GRAPH))
    sets = [{"n1": {"scale": 9}}, {"lv": {"gamma": 2.5}}]
    tokens = [tokenizer.tokenize(s) for s in sets]
    by_tokens = worker.score(ScoreRequest(GRAPH, [0, 0], target, tokens=tokens))
    by_params = worker.score(ScoreRequest(GRAPH, [0, 0], target,
                                          param_sets=[tokenizer.detokenize(t) for t in tokens]))
    assert all(r.ok for r in by_tokens)
    assert [r.reward for r in by_tokens] == pytest.approx([r.reward for r in by_params], abs=1e-6)
    broken = worker.score(ScoreRequest(GRAPH, [0], target, tokens=[tokens[0][:-1]]))
    assert not broken[0].ok and broken[0].error


def test_library_ids_resolve(worker, target):
    from graph_executor.library import library_names
    names = library_names()
    if not names:
        pytest.skip("graph library has no graphs yet")
    results = worker.score(ScoreRequest(f"lib:{names[0]}", [0, 1], target, param_sets=[{}, {}]))
    assert all(r.ok for r in results), [r.error for r in results]
    missing = worker.score(ScoreRequest("lib:no_such_graph", [0], target, param_sets=[{}]))
    assert not missing[0].ok and "no_such_graph" in missing[0].error


@pytest.fixture
def fragile_node_type():
    """A real node type that raises for x > 0.9 and yields NaN for x < 0.1; unregistered afterwards."""
    from graph_executor.schema import NODE_TYPES, P, node

    @node("test_fragile", "filter", inputs={"in": "gray"}, params=[P("x", "float", 0.5, 0.0, 1.0)])
    def fragile(ctx, inputs, p):
        """Test-only node."""
        if bool((p["x"] > 0.9).any()):
            raise RuntimeError("fragile node exploded")
        x = p["x"].view(-1, 1, 1, 1)
        return {"out": torch.where(x < 0.1, torch.full_like(inputs["in"], float("nan")), inputs["in"] * x)}

    yield
    NODE_TYPES.pop("test_fragile")


def test_executor_errors_and_nan_maps_fail_only_their_samples(fragile_node_type, target):
    worker = RewardWorker(RewardConfig(res=64, micro_batch=4))
    graph = json.dumps({"nodes": {"n": {"type": "perlin_fbm"}, "f": {"type": "test_fragile", "inputs": {"in": "n"}},
                                  "out": {"type": "output", "inputs": {"height": "f", "roughness": "f"}}}})
    sets = [{"f": {"x": v}} for v in (0.5, 0.95, 0.05, 0.3)]
    results = worker.score(ScoreRequest(graph, [0, 1, 2, 3], target, param_sets=sets))
    assert [r.ok for r in results] == [True, False, False, True]
    assert "fragile node exploded" in results[1].error and results[1].error.startswith("executor")
    assert "non-finite" in results[2].error and "height" in results[2].error
    assert worker.stats()["failures"] == 2


def test_the_deadline_is_also_checked_before_each_reward_chunk(target):
    """A deadline that passes while the first sample executes: the second is never executed, the
    first is executed but gets no reward computed; both fail as timeouts naming the stage."""
    worker = RewardWorker(RewardConfig(res=2048, micro_batch=1))  # execution dominates at 2048²
    one = ScoreRequest(GRAPH, [0], target, param_sets=[{}])
    worker.score(one)  # caches plan and target descriptor
    started = time.perf_counter()
    assert worker.score(one)[0].ok
    whole = time.perf_counter() - started
    results = worker.score(ScoreRequest(GRAPH, [0, 1], target, param_sets=[{}, {}], timeout_s=whole / 2))
    assert "reward was computed" in results[0].error and "was executed" in results[1].error
    assert not any(r.ok for r in results)


def test_samples_per_call_keeps_cpu_calls_at_one_256_squared_sample_unless_set():
    assert [RewardConfig(res=r).samples_per_call for r in (64, 128, 256, 512)] == [16, 4, 1, 1]
    assert RewardConfig(device="cuda").samples_per_call == 1024
    assert RewardConfig(res=64, micro_batch=3).samples_per_call == 3


@pytest.mark.gpu
def test_cuda_worker_scores_like_the_cpu_worker(target):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    request = ScoreRequest(structure=GRAPH, seeds=list(range(6)), target=png_bytes(target),
                           param_sets=[{"n1": {"scale": 2 + i}} for i in range(6)])
    on_gpu = RewardWorker(RewardConfig(res=64, device="cuda")).score(request)
    on_cpu = RewardWorker(RewardConfig(res=64)).score(request)
    assert all(r.ok for r in on_gpu + on_cpu)
    assert [r.reward for r in on_gpu] == pytest.approx([r.reward for r in on_cpu], abs=2e-3)



def _fast_and_reference(request, **config):
    fast = RewardWorker(RewardConfig(res=64, **config)).score(request)
    reference = RewardWorker(RewardConfig(res=64, batched_validation=False, **config)).score(request)
    return fast, reference


def _assert_same(fast, reference):
    assert [r.ok for r in fast] == [r.ok for r in reference]
    assert [r.error for r in fast] == [r.error for r in reference]
    assert [r.reward for r in fast] == pytest.approx([r.reward for r in reference], abs=1e-6)
    assert [r.terms for r in fast] == [pytest.approx(r.terms, abs=1e-6) for r in reference]


@pytest.fixture(scope="module")
def library_tokens():
    """Sampled parameters of a library graph with ints, enums, floats and colours, as token rows."""
    from graph_executor.library import load_library_graph
    from graph_executor.sampling import sample_parameters
    from policy.tokenizer import GraphTokenizer
    graph = load_library_graph("brushed_gold")
    tokenizer = GraphTokenizer(graph)
    return tokenizer, [tokenizer.tokenize(s) for s in sample_parameters(graph, 10, 3)]


def test_batched_tokens_equal_the_per_sample_reference_including_bad_rows(library_tokens, target):
    """The fast path (one screen + columns for the request) gives the reference's rewards, ok flags
    and reasons, with bad rows of every kind mixed in: an invalid token, a short row, a string,
    a float row (accepted by the reference, so it must be here too) and a numpy row."""
    tokenizer, rows = library_tokens
    enum_slot = next(s for s in tokenizer.slots if s.spec.kind.value == "enum")
    invalid = list(rows[1])
    invalid[enum_slot.index] = enum_slot.valid_tokens
    tokens = [rows[0], invalid, rows[2][:-1], [str(t) for t in rows[3]], [float(t) for t in rows[4]],
              np.asarray(rows[5], dtype=np.int32), rows[6], rows[7]]
    request = ScoreRequest("lib:brushed_gold", list(range(len(tokens))), target, tokens=tokens)
    fast, reference = _fast_and_reference(request, micro_batch=3)
    _assert_same(fast, reference)
    assert [r.ok for r in fast] == [True, False, False, False, True, True, True, True]
    assert f"node '{enum_slot.node}', parameter '{enum_slot.param}'" in fast[1].error
    assert "tokens (one per slot)" in fast[2].error


def test_batched_tokens_as_one_integer_matrix_equal_the_reference(library_tokens, target):
    _, rows = library_tokens
    request = ScoreRequest("lib:brushed_gold", list(range(len(rows))), target, tokens=np.asarray(rows))
    fast, reference = _fast_and_reference(request)
    assert all(r.ok for r in fast)
    _assert_same(fast, reference)


def test_batched_parameter_sets_equal_the_reference_and_bad_ones_fail_alone(target):
    good = [{}, {"n1": {"scale": 9}}, {"lv": {"gamma": 2.5}}, {"n1": {"octaves": 2}}]
    request = ScoreRequest(GRAPH, [0, 1, 2, 3], target, param_sets=good)
    fast, reference = _fast_and_reference(request, micro_batch=2)
    assert all(r.ok for r in fast)
    _assert_same(fast, reference)
    mixed = [{}, {"lv": {"gamma": float("nan")}}, {"n1": {"scale": 6}}, {"nope": {"x": 1}}, {"n1": {"scale": 999}},
             {"lv": {"gamma": "x"}}, {"n1": {"scale": 3}}]
    request = ScoreRequest(GRAPH, list(range(len(mixed))), target, param_sets=mixed)
    fast, reference = _fast_and_reference(request, micro_batch=2)
    _assert_same(fast, reference)
    assert [r.ok for r in fast] == [True, False, True, False, False, False, True]


def test_timings_name_every_phase(worker, target):
    results = worker.score(ScoreRequest(GRAPH, [0, 1], target, param_sets=[{}, {"n1": {"scale": 5}}]))
    timings = results[0].timings
    assert {"decode", "validate", "execute", "render", "cnn", "terms", "prepare", "reward", "total",
            "request_total"} == set(timings)
    assert all(v >= 0 for v in timings.values())
    assert timings["prepare"] == pytest.approx(timings["decode"] + timings["validate"])
    assert timings["reward"] == pytest.approx(timings["cnn"] + timings["terms"])
    phases = sum(timings[k] for k in ("decode", "validate", "execute", "render", "cnn", "terms"))
    assert phases <= timings["total"] * (1 + 1e-6)


def test_padding_to_power_of_two_batches_repeats_the_last_row():
    from reward_service.worker import _next_power_of_two, _pad_rows
    assert [_next_power_of_two(n) for n in (1, 2, 3, 5, 1024, 1025)] == [1, 2, 4, 8, 1024, 2048]
    padded = _pad_rows({"a": {"x": torch.tensor([1.0, 2.0, 3.0]), "c": torch.eye(3)}}, 4)
    assert padded["a"]["x"].tolist() == [1.0, 2.0, 3.0, 3.0]
    assert padded["a"]["c"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]


def test_request_parameters_move_to_a_device_in_one_copy_per_dtype():
    from reward_service.worker import _to_device
    from graph_executor.executor import Plan
    plan = Plan(loads_graph(GRAPH))
    params = plan.stack([{}, {"n1": {"scale": 9}}, {"lv": {"gamma": 2.5}}])
    moved = _to_device(params, torch.device("cpu"))
    for node, ps in params.items():
        for name, t in ps.items():
            assert moved[node][name].is_contiguous() and torch.equal(moved[node][name], t), (node, name)
