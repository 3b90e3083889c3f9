"""esegeta's N-D parameterization and transforms (used for 3D) against Lucent's 2D ones."""

from __future__ import annotations

import pytest
import torch
from esegeta_lucent import volume


def test_fourier_param_matches_lucent_in_2d() -> None:
    from lucent.optvis.param.spatial import fft_image

    shape = (2, 3, 8, 12)
    torch.manual_seed(0)
    (theirs,), their_image = fft_image(list(shape), sd=0.01)
    torch.manual_seed(0)
    ours, our_image = volume.fourier_param(shape, 0.01, torch.device("cpu"))
    assert ours.shape == theirs.shape
    torch.testing.assert_close(our_image(), their_image())


def test_decorrelation_matches_lucent() -> None:
    from lucent.optvis.param.color import _linear_decorrelate_color

    image = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(volume.decorrelate_colors(image), _linear_decorrelate_color(image))
    volume_image = torch.randn(1, 3, 2, 3, 4)
    per_slice = torch.stack(
        [_linear_decorrelate_color(volume_image[:, :, d]) for d in range(2)], dim=2
    )
    torch.testing.assert_close(volume.decorrelate_colors(volume_image), per_slice)


@pytest.mark.parametrize("size", [(8, 8, 8), (5, 6, 7)])
@pytest.mark.parametrize("fft", [True, False])
def test_volume_param_shapes_range_and_gradients(size: tuple[int, ...], fft: bool) -> None:
    params, image_f = volume.image_param(
        (2, 3, *size), fft=fft, decorrelate=True, sd=0.01, device=torch.device("cpu")
    )
    image = image_f()
    values = image.detach()
    assert image.shape == (2, 3, *size)
    assert float(values.min()) > 0 and float(values.max()) < 1
    image[:, 0].sum().backward()
    assert params[0].grad is not None and float(params[0].grad.abs().sum()) > 0


def test_fourier_spectrum_favours_low_frequencies() -> None:
    scale = volume.spectrum_scale((8, 8, 8))
    assert scale.shape == (8, 8, 5)
    assert float(scale[0, 0, 0]) == scale.max() and float(scale[4, 4, 4]) == scale.min()


def test_transforms_keep_batch_and_channels_and_resize_back() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 1, 6, 7, 8)
    chain = volume.compose(
        [
            volume.pad(2),
            volume.jitter(3),
            volume.random_scale([0.8, 1.2]),
            volume.random_rotate([-20, 20]),
            volume.resize((6, 7, 8)),
        ]
    )
    for _ in range(5):
        assert chain(image).shape == image.shape
    shifted = volume.jitter(4)(image)
    assert shifted.shape == image.shape


def test_jitter_and_rotation_move_content() -> None:
    torch.manual_seed(1)
    image = torch.rand(1, 1, 6, 6, 6)
    rotated = volume.random_rotate([90])(image)
    assert not torch.allclose(rotated, image)
    assert torch.equal(volume.random_rotate([0])(image), image)
    # shifts are zero-filled at the start of each axis; the far corner always survives
    ones = torch.ones(1, 1, 6, 6, 6)
    torch.manual_seed(2)
    shifted = volume.jitter(6)(ones)
    assert float(shifted.sum()) < float(ones.sum())
    assert float(shifted[0, 0, -1, -1, -1]) == 1.0
    assert float(shifted[0, 0, 0, 0, 0]) in (0.0, 1.0)
