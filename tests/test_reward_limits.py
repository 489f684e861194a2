"""Regression tests of issue 10's reward-service defects, through a real gRPC server on 127.0.0.1
over real Ray reward-worker actors:

1. a client's short deadline must not freeze a worker nor get a live worker counted as dead, and
   a client that gives up costs the pool nothing beyond the work already started;
2. targets put under keys are bounded in memory (per worker and in the server), can be deleted;
4. truncated or corrupt PNG/JPEG targets are INVALID_ARGUMENT, in Score and PutTarget alike;
5. Resize is administrative, bounded, and leaves no slot 'starting' when it fails or is abandoned.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import ray
from PIL import Image
from ray.exceptions import RayActorError

from reward_service.client import RetryPolicy, RewardClient, RewardServiceError
from reward_service.config import MetricConfig, RewardConfig
from reward_service.pool import PoolConfig, RewardPool, SlotState
from reward_service.proto import reward_pb2
from reward_service.server import BackgroundServer, ServerConfig
from reward_service.worker import ScoreRequest
from tests.service_helpers import local_ray_service

TOKEN, ADMIN = "scoring-token-limits", "admin-token-limits"
WORKER_STORE = 2 << 20   # ~4 descriptors of 0.47 MB (EfficientNet-Lite0) per worker
POOL_STORE = 1 << 20     # ~6 encoded 2048² test images (~160 KB each) in the server
CHUNK = 256
REWARD = RewardConfig(res=64, metric=MetricConfig(image_res=64), target_store_bytes=WORKER_STORE)
GRAPH = json.dumps({"format": "matrl.graph/1", "name": "limits", "nodes": {
    "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
    "out": {"type": "output", "inputs": {"basecolor": "noise", "height": "noise"}}}})


def pixels(side: int = 64, k: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([(x * (k + 3) * 128 // side) % 256, (y * 256 // side) % 256,
                     ((x + y) * 64 // side + 40 * k) % 256], -1).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


TARGET = encode(pixels())


def request(n: int, target=TARGET) -> ScoreRequest:
    return ScoreRequest(structure=GRAPH, seeds=list(range(n)), target=target,
                        param_sets=[{"noise": {"persistence": 0.1 + 0.8 * (i % 17) / 17}} for i in range(n)])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with local_ray_service() as start:
        auth = tmp_path_factory.mktemp("auth")
        (auth / "token").write_text(TOKEN)
        (auth / "admin").write_text(ADMIN)
        pool = RewardPool(REWARD, PoolConfig(workers=1, max_workers=8, max_target_store_bytes=POOL_STORE))
        server = BackgroundServer(pool, ServerConfig(port=0, chunk_samples=CHUNK, token_file=auth / "token",
                                                     admin_token_file=auth / "admin"))
        yield start(server)


@pytest.fixture
def client(service):
    with RewardClient(service.address, token=TOKEN, timeout_s=120, retry=RetryPolicy(attempts=1)) as c:
        yield c


@pytest.fixture
def admin(service):
    with RewardClient(service.address, token=TOKEN, admin_token=ADMIN, timeout_s=120,
                      retry=RetryPolicy(attempts=1)) as c:
        yield c


def wait_for(predicate, timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def worker_stats(service) -> dict:
    return service.run(service.pool.worker_stats())[0]


def worker_pid(service) -> int:
    return ray.get(service.pool.slots[0].actor.ready.remote(), timeout=60)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---- 1. deadlines and cancellation -------------------------------------------------------------------

def test_short_deadlines_neither_freeze_the_worker_nor_get_it_counted_dead(service, client):
    """Issue 10.1: after a few 1 ms deadlines the next requests took ~31 s (Ray's actor task queue
    waited 30 s for tasks the pool had ray.cancel'ed) and the pool 'restarted' a live worker."""
    assert all(r.ok for r in client.score(request(2)))
    before = client.pool_status()
    pid = worker_pid(service)
    exceeded = 0
    for _ in range(6):
        # On a loaded host gRPC's client may handle the answer before its own late 1 ms deadline
        # timer (seen twice in full suite runs, with 2 and with 16 samples): such a call succeeds,
        # which is not what this test is about. Every failure must be the deadline, and most calls
        # must fail, or the test would not exercise short deadlines at all.
        try:
            results = client.score(request(16), timeout_s=0.001)
        except RewardServiceError as err:
            assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED, err
            exceeded += 1
        else:
            assert all(r.ok for r in results)
    assert exceeded >= 4, f"only {exceeded} of 6 calls with a 1 ms deadline hit it"
    for _ in range(4):  # other clients' ordinary requests, each well under the 30 s freeze
        assert all(r.ok for r in client.score(request(2), timeout_s=20))
    wait_for(lambda: client.pool_status()["in_flight"] == 0, what="no task in flight")
    after = client.pool_status()
    assert (after["ready"], after["recovering"], after["starting"]) == (1, 0, 0)
    assert after["restarts"] == before["restarts"] and after["retries"] == before["retries"]
    assert worker_pid(service) == pid


def test_a_cancelled_call_stops_its_running_task_and_skips_its_queued_one(service, client):
    """The worker gets the cancellation while it runs (its control thread): the running task stops at
    its next micro-batch and the queued one never starts; the pool keeps their slots until then."""
    before = worker_stats(service)
    call = client.stub.Score.future(reward_pb2.ScoreRequest(request_id="cancel-me",
                                                            arrow_batch=_payload(request(4 * CHUNK))),
                                    timeout=300, metadata=client._metadata)
    wait_for(lambda: worker_stats(service)["requests"] > before["requests"], what="the first task to start")
    assert service.pool.status()["in_flight"] == 2  # max_in_flight: one running, one queued
    call.cancel()
    wait_for(lambda: client.pool_status()["in_flight"] == 0, what="the abandoned tasks to end")
    after = worker_stats(service)
    scored = (after["samples"] - after["failures"]) - (before["samples"] - before["failures"])
    assert scored < CHUNK, "the running task ran to its end"
    assert after["cancelled"] > before["cancelled"]
    assert after["skipped_cancelled"] == before["skipped_cancelled"] + 1
    assert client.pool_status()["abandoned"] >= 2
    assert all(r.ok for r in client.score(request(2), timeout_s=20))


def _payload(req: ScoreRequest) -> bytes:
    from reward_service.arrow_codec import encode_request

    return encode_request([req])


# ---- 2. bounded target store ------------------------------------------------------------------------

def test_many_large_targets_keep_worker_memory_bounded_and_evict_least_recently_used(service, client):
    """Issue 10.2: every key kept the decoded float32 image on every worker (50 MB per 2048² image,
    220 MB per 4096²), without bound. Now a key costs its descriptor (~0.47 MB), the worker keeps
    at most `target_store_bytes` of them and the server at most `max_target_store_bytes` of images."""
    pid = worker_pid(service)
    images = [encode(pixels(2048, k), compress_level=1) for k in range(16)]
    for k in range(2):
        client.put_target(f"big/{k}", images[k])
    baseline = rss_bytes(pid)
    peak = baseline
    for k in range(2, len(images)):
        client.put_target(f"big/{k}", images[k])
        peak = max(peak, rss_bytes(pid))
    print(f"\nworker RSS after 2 puts {baseline / 2**20:.0f} MiB, peak over 14 more {peak / 2**20:.0f} MiB")
    assert peak - baseline < 300 << 20  # unbounded, 14 more keys would add 14 x 50 MB = 700 MB
    stats, status = worker_stats(service), client.pool_status()
    print(f"store {stats['target_store_keys']} keys {stats['target_store_bytes'] / 2**20:.2f} MiB, "
          f"{stats['target_store_evictions']} evictions; server {status['targets']} keys "
          f"{status['target_bytes'] / 2**20:.2f} MiB")
    assert 0 < stats["target_store_bytes"] <= WORKER_STORE and stats["target_store_evictions"] > 0
    assert 0 < status["target_bytes"] <= POOL_STORE and status["targets"] < len(images)
    # a key the worker evicted but the server still holds is put back on demand
    kept = f"big/{len(images) - status['targets']}"
    assert all(r.ok for r in client.score(request(2, target=kept)))
    # the least recently used keys were dropped by the server: NOT_FOUND, naming the key
    with pytest.raises(RewardServiceError) as err:
        client.score(request(1, target="big/0"))
    assert err.value.code is grpc.StatusCode.NOT_FOUND and "'big/0'" in err.value.message


def test_delete_target_forgets_the_key_everywhere(service, client):
    assert client.put_target("gone", TARGET) == 1
    assert all(r.ok for r in client.score(request(1, target="gone")))
    assert client.delete_target("gone") == 1
    with pytest.raises(RewardServiceError) as err:
        client.score(request(1, target="gone"))
    assert err.value.code is grpc.StatusCode.NOT_FOUND and "'gone'" in err.value.message
    with pytest.raises(RewardServiceError) as err:
        client.delete_target("gone")
    assert err.value.code is grpc.StatusCode.NOT_FOUND and "'gone'" in err.value.message


def test_a_replaced_key_is_never_scored_with_its_old_image(service, client):
    first, second = encode(pixels(64, 1)), encode(pixels(64, 2))
    client.put_target("swap", first)
    old = client.score(request(2, target="swap"))
    client.put_target("swap", second)
    assert [r.reward for r in client.score(request(2, target="swap"))] == \
        pytest.approx([r.reward for r in client.score(request(2, target=second))], abs=1e-6)
    assert [r.reward for r in old] != pytest.approx([r.reward for r in client.score(request(2, target=second))])


# ---- 4. damaged images --------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_missing_rows(side: int = 64, declared: int = 80) -> bytes:
    """A well-formed PNG (CRCs right, zlib stream complete) whose IHDR declares more rows than its
    IDAT holds: Pillow decodes it with the missing rows black."""
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels(side))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, declared, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def jpeg_with_zeroed_bytes() -> bytes:
    """A JPEG with 600 zero bytes in the middle of its entropy-coded data: libjpeg warns ('Corrupt
    JPEG data'), Pillow ignores the warning and decodes the rest as grey."""
    rng = np.random.default_rng(1)
    noisy = np.clip(pixels(128).astype(int) + rng.integers(-30, 30, (128, 128, 3)), 0, 255).astype(np.uint8)
    data = bytearray(encode(noisy, "JPEG", quality=90))
    middle = len(data) // 2
    data[middle:middle + 600] = bytes(600)
    return bytes(data)


def _flip_crc(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[50] ^= 0xFF  # inside the IDAT data of a small PNG
    return bytes(damaged)


DAMAGED = {
    "png declaring more rows than it holds": (png_with_missing_rows(), "PNG image data is incomplete"),
    "jpeg with zeroed bytes mid-stream": (jpeg_with_zeroed_bytes(), "JPEG data is corrupt or truncated"),
    "png cut short": (TARGET[: len(TARGET) * 2 // 3], "PNG truncated"),
    "jpeg cut short": (encode(pixels(128), "JPEG")[:-300], "JPEG data is corrupt or truncated"),
    "png with a corrupt chunk": (_flip_crc(TARGET), "fails its CRC check"),
    "not png or jpeg": (encode(pixels(), "BMP"), "not a PNG or JPEG image"),
}


def test_pillow_alone_accepts_the_damaged_images():
    """What the rejection guards against: Pillow decodes these without a word."""
    for name in ("png declaring more rows than it holds", "jpeg with zeroed bytes mid-stream"):
        with Image.open(io.BytesIO(DAMAGED[name][0])) as im:
            assert np.asarray(im.convert("RGB")).size > 0


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_targets_are_invalid_argument_in_score_and_put_target(client, case):
    image, problem = DAMAGED[case]
    with pytest.raises(RewardServiceError) as err:
        client.score(request(1, target=image))
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and problem in err.value.message, err.value.message
    with pytest.raises(RewardServiceError) as err:
        client.put_target("damaged", image)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and problem in err.value.message
    assert "'damaged'" in err.value.message
    assert all(r.ok for r in client.score(request(1)))


# ---- 5. Resize -------------------------------------------------------------------------------------------

def test_resize_needs_the_admin_token(client, service):
    """Issue 10.5: any scoring client could Resize(0) and take the service down."""
    for workers in (0, 2):
        with pytest.raises(RewardServiceError) as err:
            client.resize(workers)
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED and "admin token" in err.value.message
    with RewardClient(service.address, retry=RetryPolicy(attempts=1)) as anonymous:
        with pytest.raises(RewardServiceError) as err:
            anonymous.resize(2)
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert client.pool_status()["ready"] == 1


def test_resize_is_bounded_by_the_configured_range_and_the_cluster(admin):
    with pytest.raises(RewardServiceError) as err:
        admin.resize(0)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "[1, 8]" in err.value.message
    with pytest.raises(RewardServiceError) as err:
        admin.resize(300)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "300" in err.value.message
    with pytest.raises(RewardServiceError) as err:
        admin.resize(3)  # within max_workers 8, beyond the 2 CPUs of this cluster
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "room for 2" in err.value.message
    status = admin.pool_status()
    assert (status["workers"], status["ready"], status["starting"], status["max_workers"]) == (1, 1, 0, 2)


@ray.remote(num_cpus=1)
class CpuHolder:
    def ready(self) -> bool:
        return True


def test_an_abandoned_resize_leaves_no_slot_starting(service, admin):
    """Issue 10.5: an abandoned Resize left its workers 'starting' for good. Here the second worker
    cannot be placed (another actor holds the CPU) and the caller gives up after 3 s."""
    holder = CpuHolder.remote()
    ray.get(holder.ready.remote(), timeout=120)
    pending = []

    def watch():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not pending:
            pending.extend(s.actor for s in service.pool.slots if s.state is SlotState.STARTING)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(RewardServiceError) as err:
            admin.resize(2, timeout_s=3)
        assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        watcher.join()
        assert pending, "the resize never created its worker"
        wait_for(lambda: admin.pool_status()["starting"] == 0, timeout_s=30, what="no slot starting")
        status = admin.pool_status()
        assert (status["workers"], status["ready"], status["starting"]) == (1, 1, 0)
        with pytest.raises(RayActorError):  # the pending actor was killed, so it will never take a CPU
            ray.get(pending[0].ready.remote(), timeout=60)
    finally:
        ray.kill(holder)
