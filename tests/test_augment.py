"""Batched augmentation (tuneclust.data.augment): shapes, determinism, and properties that catch real bugs."""

from __future__ import annotations

import colorsys
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneclust.data import augment as A


# Each op as a method uses it, on its own: draw the batch's parameters from the generator, then apply them.
def random_resized_crop(x, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator):
    b, _, h, w = x.shape
    return A.crop_resize(x, A.sample_boxes(b, h, w, scale=scale, ratio=ratio, generator=generator))


def horizontal_flip(x, *, p=0.5, generator):
    return A.flip_where(x, A.coin(len(x), p, generator))


def color_jitter(x, *, generator, **strengths):
    return A.apply_color_jitter(
        x, A.draw_color_jitter(len(x), channels=x.shape[1], generator=generator, **strengths)
    )


def random_grayscale(x: torch.Tensor, *, p: float, generator: torch.Generator) -> torch.Tensor:
    return A.grayscale_where(x, A.coin(x.shape[0], p, generator, x.device))


def channel_shuffle(x, *, generator):
    return A.permute_channels(x, A.draw_channel_perm(len(x), x.shape[1], generator))


def random_rotation(x, *, degrees, generator):
    return A.rotate(x, A.draw_angles(len(x), degrees, generator=generator))


def random_scale(x, *, scale=(0.9, 1.1), generator):
    return A.zoom(x, A.draw_zoom(len(x), scale, generator=generator))


def random_erasing(x, *, value=0.0, generator, **box):
    return A.erase(x, A.draw_erasing(len(x), *x.shape[2:], generator=generator, **box), value)


RANDOM_OPS = {
    "random_resized_crop": partial(random_resized_crop, scale=(0.2, 1.0)),
    "horizontal_flip": horizontal_flip,
    "color_jitter": partial(color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.125, p=0.8),
    "random_grayscale": partial(random_grayscale, p=0.5),
    "channel_shuffle": channel_shuffle,
    "random_rotation": partial(random_rotation, degrees=30),
    "random_scale": random_scale,
    "random_erasing": random_erasing,
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(
    b: int = 8, c: int = 3, h: int = 8, w: int = 8, seed: int = 0, dtype=torch.float32
) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed), dtype=dtype)


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
@pytest.mark.parametrize("c,h,w,dtype", [(3, 8, 8, torch.float32), (1, 6, 10, torch.float64)])
def test_shape_dtype_range(name, c, h, w, dtype):
    x = images(c=c, h=h, w=w, dtype=dtype)
    with torch.no_grad():
        y = RANDOM_OPS[name](x, generator=gen(1))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_deterministic_given_seed(name):
    x, op = images(b=16), RANDOM_OPS[name]
    assert torch.equal(op(x, generator=gen(3)), op(x, generator=gen(3)))
    assert not torch.equal(op(x, generator=gen(3)), op(x, generator=gen(4)))


def test_ops_reject_vectors():
    with pytest.raises(ValueError, match="B, C, H, W"):
        horizontal_flip(torch.rand(4, 10), generator=gen(0))


def test_drawing_a_pipeline_first_takes_the_same_numbers_as_drawing_each_op_before_it_runs():
    # the methods draw every parameter first (outside a compiled step) and apply the dict in order: the images
    # and the generator's state after equal those of each op drawing just before it is applied
    x = images(b=12, h=10, w=10)
    g1, g2 = gen(5), gen(5)
    drawn = {
        "rotate": A.draw_angles(12, 20, generator=g1),
        "zoom": A.draw_zoom(12, (0.8, 1.2), generator=g1),
        "crop": A.sample_boxes(12, 10, 10, scale=(0.3, 1.0), ratio=(0.75, 1.33), generator=g1),
        "flip": A.coin(12, 0.5, g1),
        "shuffle": A.draw_channel_perm(12, 3, g1),
        "jitter": A.draw_color_jitter(12, channels=3, brightness=0.4, hue=0.1, p=0.7, generator=g1),
        "gray": A.coin(12, 0.3, g1),
        "erase": A.draw_erasing(12, 10, 10, p=0.5, generator=g1),
    }
    assert set(drawn) == set(A.APPLY)  # every op of the module is in the pipeline
    y = random_rotation(x, degrees=20, generator=g2)
    y = random_scale(y, scale=(0.8, 1.2), generator=g2)
    y = random_resized_crop(y, scale=(0.3, 1.0), ratio=(0.75, 1.33), generator=g2)
    y = horizontal_flip(y, p=0.5, generator=g2)
    y = channel_shuffle(y, generator=g2)
    y = color_jitter(y, brightness=0.4, hue=0.1, p=0.7, generator=g2)
    y = random_grayscale(y, p=0.3, generator=g2)
    y = random_erasing(y, p=0.5, generator=g2)
    assert torch.equal(A.apply_drawn(x, drawn), y) and not torch.equal(y, x)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_flip_probability_extremes_and_per_sample():
    x = images(b=64)
    assert torch.equal(horizontal_flip(x, p=1.0, generator=gen(0)), x.flip(-1))
    assert torch.equal(horizontal_flip(x, p=0.0, generator=gen(0)), x)
    y = horizontal_flip(x, p=0.5, generator=gen(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each sample is wholly one or the other
    assert 16 <= int(flipped.sum()) <= 48


def test_resized_crop_full_box_is_identity():
    x = images()
    y = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen(0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_resized_crop_of_constant_image_is_constant():
    x = torch.full((16, 3, 8, 8), 0.37)
    y = random_resized_crop(x, scale=(0.08, 0.3), generator=gen(0))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_crop_resize_matches_hand_built_crop_and_interpolate():
    x = images(b=2, h=8, w=8)
    boxes = torch.tensor([[1, 2, 4, 5], [0, 0, 3, 8]])  # top, left, h, w
    y = A.crop_resize(x, boxes)
    for i, (t, left, h, w) in enumerate(boxes.tolist()):
        ref = F.interpolate(
            x[i : i + 1, :, t : t + h, left : left + w], size=(8, 8), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(y[i : i + 1], ref, atol=1e-5, rtol=0)


def test_random_resized_crop_uses_sampled_boxes():
    x = images(b=5, h=12, w=12)
    boxes = A.sample_boxes(5, 12, 12, scale=(0.1, 0.3), ratio=(3 / 4, 4 / 3), generator=gen(7))
    y = random_resized_crop(x, scale=(0.1, 0.3), ratio=(3 / 4, 4 / 3), generator=gen(7))
    torch.testing.assert_close(y, A.crop_resize(x, boxes))
    assert (boxes[:, 2] < 12).all()  # small scale -> a real zoom, not the identity


def test_sample_boxes_inside_image_with_requested_area_and_ratio():
    n, H, W = 4000, 32, 24
    top, left, h, w = A.sample_boxes(n, H, W, scale=(0.2, 0.6), ratio=(0.5, 2.0), generator=gen(0)).T.double()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    frac = h * w / (H * W)
    assert frac.min() > 0.2 * 0.85 and frac.max() < 0.6 * 1.15  # rounding of h and w
    assert frac.mean().item() == pytest.approx(0.4, abs=0.03)
    log_r = torch.log(w / h)
    assert log_r.mean().item() == pytest.approx(0.0, abs=0.05)  # log-uniform over a symmetric range
    assert len(set(top.tolist())) > 5 and len(set(left.tolist())) > 5  # positions vary
    b = A.sample_boxes(3, 10, 10, scale=(0.6, 0.6), ratio=(1.0, 1.0), generator=gen(0))
    assert (b[:, 2:] == 8).all()  # torchvision: int(round(sqrt(0.6 * 100))) = 8


def test_rotation_by_90_equals_rot90_and_0_is_identity():
    x = images(h=8, w=8)
    y = random_rotation(x, degrees=(90.0, 90.0), generator=gen(0))
    torch.testing.assert_close(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)  # counter-clockwise
    torch.testing.assert_close(random_rotation(x, degrees=0, generator=gen(0)), x, atol=1e-6, rtol=0)
    x2 = images(h=6, w=10)
    y2 = random_rotation(x2, degrees=(180.0, 180.0), generator=gen(0))
    torch.testing.assert_close(y2, x2.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_random_scale_zooms_about_centre():
    x = images(h=8, w=8)
    torch.testing.assert_close(random_scale(x, scale=(1.0, 1.0), generator=gen(0)), x, atol=1e-6, rtol=0)
    y = random_scale(x, scale=(2.0, 2.0), generator=gen(0))
    centre = A.crop_resize(x, torch.tensor([[2, 2, 4, 4]]).repeat(len(x), 1))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], centre[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    shrunk = random_scale(torch.ones(2, 1, 8, 8), scale=(0.5, 0.5), generator=gen(0))
    assert float(shrunk[..., 0, 0].max()) == 0.0 and float(shrunk[..., 3:5, 3:5].min()) == pytest.approx(1.0)


def test_color_jitter_zero_strength_and_p0_are_identity():
    x = images()
    assert torch.equal(color_jitter(x, generator=gen(0)), x)
    assert torch.equal(color_jitter(x, brightness=0.5, hue=0.2, p=0.0, generator=gen(0)), x)
    x1 = images(c=1)
    assert torch.equal(color_jitter(x1, saturation=0.9, hue=0.4, generator=gen(0)), x1)  # no-ops on gray


def test_brightness_scales_each_sample_by_one_factor_in_range():
    x = 0.2 + 0.4 * images(b=32)  # in [0.2, 0.6]: no clamping at factor <= 1.5
    y = color_jitter(x, brightness=0.5, generator=gen(0))
    ratio = (y / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5, rtol=0)
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 1.5 + 1e-6 and ratio[:, 0].std() > 0.05


def test_contrast_keeps_mean_and_saturation_keeps_luma():
    x = 0.4 + 0.2 * images(b=16)
    y = color_jitter(x, contrast=0.5, generator=gen(0))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    luma_y = 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]
    torch.testing.assert_close(luma_y.mean(dim=(1, 2)), luma.mean(dim=(1, 2)), atol=1e-5, rtol=0)
    assert not torch.allclose(y, x)
    z = color_jitter(x, saturation=0.5, generator=gen(0))
    torch.testing.assert_close(0.299 * z[:, 0] + 0.587 * z[:, 1] + 0.114 * z[:, 2], luma, atol=1e-5, rtol=0)
    assert not torch.allclose(z, x)


def test_color_jitter_probability_is_per_sample():
    x = images(b=64)
    y = color_jitter(x, brightness=0.5, p=0.5, generator=gen(0))
    kept = (y == x).flatten(1).all(1)
    assert 16 <= int(kept.sum()) <= 48


def test_grayscale_uses_itu_601_weights_and_keeps_channels():
    x = torch.zeros(3, 3, 2, 2)
    for i in range(3):
        x[i, i] = 1.0  # pure red, green, blue
    g = A.to_grayscale(x)
    assert g.shape == (3, 1, 2, 2)
    torch.testing.assert_close(g[:, 0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))
    y = random_grayscale(x, p=1.0, generator=gen(0))
    assert y.shape == x.shape and torch.equal(y, g.expand(-1, 3, -1, -1))
    assert torch.equal(random_grayscale(x, p=0.0, generator=gen(0)), x)
    x1 = images(c=1)
    assert torch.equal(random_grayscale(x1, p=1.0, generator=gen(0)), x1)


def test_rgb_to_hsv_matches_colorsys_and_round_trips():
    x = images(b=4, h=4, w=4)
    x[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # gray: hue 0, saturation 0
    x[0, :, 0, 1] = 0.0  # black
    hsv = A.rgb_to_hsv(x)
    px = x.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    np.testing.assert_allclose(hsv.permute(0, 2, 3, 1).reshape(-1, 3).numpy(), ref, atol=1e-5)
    torch.testing.assert_close(A.hsv_to_rgb(hsv), x, atol=1e-5, rtol=0)


def test_hue_shift_rotates_primaries_and_zero_is_identity():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        A.adjust_hue(red, torch.tensor([1 / 3])),
        torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        A.adjust_hue(red, torch.tensor([-1 / 3])),
        torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1),
        atol=1e-5,
        rtol=0,
    )
    x = images(b=4)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    y = color_jitter(x, hue=0.25, generator=gen(0))
    torch.testing.assert_close(
        A.rgb_to_hsv(y)[:, 2], A.rgb_to_hsv(x)[:, 2], atol=1e-5, rtol=0
    )  # value unchanged


def test_channel_shuffle_permutes_whole_channels_per_sample():
    x = images(b=64)
    y = channel_shuffle(x, generator=gen(0))
    torch.testing.assert_close(y.sort(dim=1).values, x.sort(dim=1).values, atol=0, rtol=0)
    # each output channel is one input channel as a whole plane
    match = (y[:, :, None] == x[:, None, :]).flatten(3).all(3)  # (B, out, in)
    assert bool((match.sum(2) == 1).all()) and bool((match.sum(1) == 1).all())
    perms = {tuple(m.float().argmax(1).tolist()) for m in match}
    assert len(perms) >= 4  # several of the 6 permutations appear


def test_erasing_writes_value_into_box_of_requested_area():
    x = 0.1 + 0.9 * images(b=16, h=16, w=16)
    y = random_erasing(x, p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=-1.0, generator=gen(0))
    erased = y == -1.0
    assert bool((erased == erased[:, :1]).all())  # same pixels in every channel
    assert bool((erased[:, 0].flatten(1).sum(1) == 64).all())  # exactly an 8x8 box
    rows, cols = erased[:, 0].any(2), erased[:, 0].any(1)
    assert bool((rows.sum(1) == 8).all() and (cols.sum(1) == 8).all())  # a rectangle
    assert torch.equal(y[~erased], x[~erased])
    z = random_erasing(x, p=1.0, scale=(0.1, 0.2), ratio=(0.5, 2.0), value=-1.0, generator=gen(1))
    frac = (z[:, 0] == -1.0).flatten(1).float().mean(1)
    assert frac.min() > 0.1 * 0.8 and frac.max() < 0.2 * 1.2
    assert torch.equal(random_erasing(x, p=0.0, generator=gen(0)), x)
    tall = random_erasing(x, p=1.0, scale=(0.1875, 0.1875), ratio=(3.0, 3.0), value=-1.0, generator=gen(2))
    box = tall[:, 0] == -1.0  # torchvision's ratio is h/w: area 48, h = 12, w = 4
    assert bool((box.any(2).sum(1) == 12).all() and (box.any(1).sum(1) == 4).all())


def test_normalize_per_channel():
    x = torch.tensor([[0.5, 1.0], [0.2, 0.0]]).view(1, 2, 1, 2)
    y = A.normalize(x, mean=(0.5, 0.1), std=(0.25, 0.5))
    torch.testing.assert_close(y, torch.tensor([[0.0, 2.0], [0.2, -0.2]]).view(1, 2, 1, 2))
