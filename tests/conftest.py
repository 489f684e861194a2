import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MATRL_TEST_THREADS", "1")))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared/real_photos beside the checkout; MATRL_REAL_PHOTOS points elsewhere (a worktree's ../shared may not exist)
REAL_PHOTOS = os.environ.get("MATRL_REAL_PHOTOS") or os.path.join(os.path.dirname(REPO), "shared", "real_photos")


@pytest.fixture
def real_photos_dir():
    if not os.path.isdir(REAL_PHOTOS):
        pytest.skip(f"{REAL_PHOTOS} is absent (set MATRL_REAL_PHOTOS to the real_photos directory)")
    return REAL_PHOTOS


@pytest.fixture(scope="module")
def ray_head(request):
    """A real local Ray head (`ray start --head`, token auth, dashboard, metrics), one per module.

    Yields `tests.ray_head.RayHead`: `.gcs_address`, `.dashboard_url`, `.metrics_port`/`.metrics_url`,
    `.env` (environment for a `ray job submit` subprocess, token included), `.job_client()`,
    `.metric_samples(name)`, `.wait_for_job(id)`. A module sets `RAY_HEAD_OPTIONS = {...}` to pass
    `start_ray_head` keyword arguments (num_cpus, resources, extra_env).
    """
    from tests.ray_head import start_ray_head

    with start_ray_head(**getattr(request.module, "RAY_HEAD_OPTIONS", {})) as head:
        yield head
