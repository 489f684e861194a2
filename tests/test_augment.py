"""Photo-like augmentation: every switch keeps images finite and in [0,1], changes them when on and
not at all when off; the OpenCV and kornia JPEG paths agree; defocus equals OpenCV's Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_executor.executor import Plan
from graph_executor.library import load_library_graph
from graph_executor.render import render_flash
from learner.augment import SWITCHES, AugmentConfig, augment, defocus, flash_positions, jpeg


@pytest.fixture(scope="module")
def maps():
    plan = Plan(load_library_graph("red_bricks"))
    return plan.run(plan.stack(batch=4), res=64, seed=[0, 1, 2, 3])


@pytest.fixture(scope="module")
def images(maps):
    return render_flash(maps)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", [s for s in SWITCHES if s != "flash"])
def test_each_augmentation_keeps_images_in_range_and_is_off_when_disabled(images, name):
    config = AugmentConfig(defocus_sigma=(2.0, 4.0)).only(name)  # sigma scales with res: 0.5-1 px at 64²
    out = augment(images, config, _gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 1e-3, name  # it does something
    assert torch.equal(out, augment(images, config, _gen()))  # a function of the generator's seed
    assert not torch.equal(out, augment(images, config, _gen(1)))
    assert torch.equal(augment(images, AugmentConfig(**{name: False}).only("flash"), _gen()), images)


def test_all_off_is_the_identity_and_switches_do_not_shift_each_other(images):
    assert torch.equal(augment(images, AugmentConfig.off(), _gen()), images)
    assert flash_positions(4, AugmentConfig.off(), _gen()) is None
    # turning jpeg off leaves the other steps' draws as they were: only the codec's effect differs
    full = augment(images, AugmentConfig(jpeg_backend="opencv"), _gen())
    no_jpeg = augment(images, AugmentConfig(jpeg=False), _gen())
    other_draws = augment(images, AugmentConfig(jpeg=False), _gen(5))
    assert 0 < (full - no_jpeg).abs().mean() < 0.5 * (other_draws - no_jpeg).abs().mean()
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig().only("vignette")


def test_flash_jitter_moves_the_light_and_off_is_the_centred_flash(maps, images):
    config = AugmentConfig()
    light = flash_positions(4, config, _gen())
    assert light.shape == (4, 3)
    assert (light[:, :2].abs() <= config.flash_offset).all()
    assert ((light[:, 2] >= config.flash_height[0]) & (light[:, 2] <= config.flash_height[1])).all()
    jittered = render_flash(maps, light=light)
    assert torch.isfinite(jittered).all() and jittered.min() >= 0 and jittered.max() <= 1
    assert (jittered - images).abs().mean() > 1e-3
    centred = render_flash(maps, light=torch.tensor([[0.0, 0.0, 1.0]] * 4))
    assert torch.allclose(centred, images, atol=1e-6)


def test_opencv_and_kornia_jpeg_agree(images):
    quality = torch.tensor([50.0, 70.0, 85.0, 95.0])
    opencv, kornia = jpeg(images, quality, "opencv"), jpeg(images, quality, "kornia")
    for out in (opencv, kornia):
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    error_cv, error_kornia = (opencv - images).abs().mean(), (kornia - images).abs().mean()
    assert error_cv > 1e-3 and error_kornia > 1e-3
    # the two codecs differ from each other by less than either differs from the original
    assert (opencv - kornia).abs().mean() < 0.6 * min(error_cv, error_kornia)
    # lower quality loses more with both
    per_image = lambda out: (out - images).abs().flatten(1).mean(1)  # noqa: E731
    assert per_image(opencv)[0] > per_image(opencv)[3] and per_image(kornia)[0] > per_image(kornia)[3]
    with pytest.raises(ValueError, match="backend"):
        jpeg(images, quality, "pillow")


def test_defocus_equals_opencv_gaussian_blur(images):
    cv2 = pytest.importorskip("cv2")
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0])
    out = defocus(images, sigma)
    assert torch.equal(out[0], images[0])
    radius = 6  # defocus's kernel: 3 x the largest sigma
    for i in range(1, 4):
        reference = cv2.GaussianBlur(images[i].permute(1, 2, 0).numpy(), (2 * radius + 1, 2 * radius + 1),
                                     float(sigma[i]), borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(out[i].permute(1, 2, 0).numpy() - reference).max() < 1e-4
