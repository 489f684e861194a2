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
