import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MATRL_TEST_THREADS", "1")))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_PHOTOS = os.path.join(os.path.dirname(REPO), "shared", "real_photos")


@pytest.fixture
def real_photos_dir():
    if not os.path.isdir(REAL_PHOTOS):
        pytest.skip("../shared/real_photos is absent")
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
