"""Batched, per-sample random image augmentation on the device (no PIL, no Python loop over samples).

One API, draw then apply: a draw takes the number of images (and their size where it matters) and a keyword
``generator`` (a ``torch.Generator`` on the images' device) and returns per-sample parameters; an apply is pure
(images (B, C, H, W) float in [0, 1], parameters -> images of the same shape, dtype and device). A method draws
its whole pipeline first, in the order it is applied, and :func:`apply_drawn` applies the dict: where a method
compiles its step (augmentation, network, loss) into one graph the draws stay outside it (``torch.compile`` does
not trace an explicit ``generator``). Draws depend only on the count and size, never on pixel values, so drawing
everything first takes the same numbers from the generator as drawing each op just before it runs.

The pairs (:data:`APPLY` names them): ``crop`` :func:`sample_boxes` / :func:`crop_resize`, ``flip``
:func:`coin` / :func:`flip_where`, ``gray`` :func:`coin` / :func:`grayscale_where`, ``shuffle``
:func:`draw_channel_perm` / :func:`permute_channels`, ``jitter`` :func:`draw_color_jitter` /
:func:`apply_color_jitter`, ``rotate`` :func:`draw_angles` / :func:`rotate`, ``zoom`` :func:`draw_zoom` /
:func:`zoom`, ``erase`` :func:`draw_erasing` / :func:`erase`. Geometric applies build per-sample affine matrices
and do one ``affine_grid`` + ``grid_sample`` (bilinear).

The pipelines they serve (methods.md): IDFD (Wu et al. 2018 / Tao et al. 2021: RandomResizedCrop(0.2-1),
ColorJitter(0.4, 0.4, 0.4), RandomGrayscale(0.2), horizontal flip), DCCS (crop 0.4-1, flip, jitter with hue
0.125, channel shuffle, grayscale), ICS (rotation, scale, erasing, flip, brightness, contrast).

Deliberate differences from torchvision, for batching:
- ``crop``/``erase``: a box that would not fit is clamped to the image instead of torchvision's
  10 re-draws (and its centre-crop fallback), so the area/aspect can be slightly off the drawn values at the edges.
- ``jitter`` applies brightness, contrast, saturation, hue in this fixed order (torchvision: random order).
- ``rotate``/``zoom`` interpolate bilinearly (torchvision's default is nearest), fill 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


def _check(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"augmentation expects images (B, C, H, W), got shape {tuple(x.shape)}")


def _check_range(name: str, lo: float, hi: float, low: float = 0.0) -> None:
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= lo <= hi, got ({lo}, {hi})")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def coin(n: int, p: float, generator: torch.Generator, device: torch.device | str | None = None) -> Tensor:
    """Bool (n,): True with probability p (p=1: always, p=0: never), on ``device`` (default: the generator's)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    device = device if device is not None else generator.device
    return torch.rand(n, generator=generator, device=device) < p


def _pick(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per sample: ``a`` where mask else ``b``."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


# ---------------------------------------------------------------------------------------------- geometry


def sample_boxes(
    n: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw integer boxes like torchvision's ``RandomResizedCrop.get_params``, clamped instead of re-drawn.

    Area fraction uniform in ``scale``, aspect ratio w/h log-uniform in ``ratio``, w and h rounded and clamped to
    [1, width] / [1, height], top-left uniform over the positions where the box fits.

    Returns:
        Long tensor (n, 4): top, left, h, w in pixels.
    """
    _check_range("scale", *scale)
    _check_range("ratio", *ratio, low=1e-12)
    device = device if device is not None else generator.device
    area = height * width * _uniform(n, scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    w = torch.sqrt(area * aspect).round().clamp(1, width)
    h = torch.sqrt(area / aspect).round().clamp(1, height)
    top = torch.minimum(
        torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1)), height - h
    )
    left = torch.minimum(
        torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1)), width - w
    )
    return torch.stack([top, left, h, w], dim=1).long()


def crop_resize(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop each sample to its box and resize it bilinearly back to (H, W): one affine_grid + grid_sample.

    Sample points are clamped to the box's pixel centres, which makes this equal to
    ``F.interpolate(x[..., t:t+h, l:l+w], (H, W), mode="bilinear", align_corners=False)`` per sample.

    Args:
        x: (B, C, H, W) images.
        boxes: (B, 4) top, left, h, w in pixels (as from :func:`sample_boxes`).
    """
    _check(x)
    b, c, H, W = x.shape
    top, left, h, w = boxes.to(device=x.device, dtype=x.dtype).unbind(1)
    theta = x.new_zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w / W, (2 * left + w) / W - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [b, c, H, W], align_corners=False)
    lo = torch.stack([(2 * left + 1) / W - 1, (2 * top + 1) / H - 1], dim=1).view(b, 1, 1, 2)
    hi = torch.stack([(2 * (left + w) - 1) / W - 1, (2 * (top + h) - 1) / H - 1], dim=1).view(b, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Sample x at theta @ (u, v, 1) (normalised output coords -> input coords), zeros outside."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def draw_angles(
    n: int,
    degrees: float | tuple[float, float],
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rotation angles (n,) in radians, uniform in [-degrees, degrees] (or [lo, hi] degrees)."""
    lo, hi = (-abs(degrees), abs(degrees)) if isinstance(degrees, int | float) else degrees
    _check_range("degrees", lo, hi, low=-math.inf)
    device = device if device is not None else generator.device
    return torch.deg2rad(_uniform(n, lo, hi, generator, device))


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate each sample about its centre by its angle (radians; positive turns counter-clockwise, torchvision's
    convention); corners are filled with 0."""
    _check(x)
    b, _, H, W = x.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(angles)
    theta = torch.stack([cos, -sin * H / W, zero, sin * W / H, cos, zero], dim=1).view(b, 2, 3)
    return _warp(x, theta)


def draw_zoom(
    n: int,
    scale: tuple[float, float] = (0.9, 1.1),
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Zoom factors (n,) uniform in ``scale``."""
    _check_range("scale", *scale, low=1e-12)
    device = device if device is not None else generator.device
    return _uniform(n, scale[0], scale[1], generator, device)


def zoom(x: Tensor, factors: Tensor) -> Tensor:
    """Zoom each sample about its centre by its factor (>1 enlarges; the border is filled with 0)."""
    _check(x)
    zero = torch.zeros_like(factors)
    theta = torch.stack([1 / factors, zero, zero, zero, 1 / factors, zero], dim=1).view(-1, 2, 3)
    return _warp(x, theta)


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the samples where ``mask`` (B,) bool is True."""
    _check(x)
    return _pick(mask, x.flip(-1), x)


def draw_erasing(
    n: int,
    height: int,
    width: int,
    *,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """torchvision's RandomErasing's parameters: a box of area fraction in ``scale`` and aspect h/w log-uniform
    in ``ratio`` (clamped to the image instead of re-drawn), erased with probability p.

    Returns:
        ``boxes`` (n, 4) top, left, h, w and ``apply`` (n,) bool.
    """
    inv = (1 / ratio[1], 1 / ratio[0])  # sample_boxes draws w/h; torchvision's erasing ratio is h/w
    boxes = sample_boxes(n, height, width, scale=scale, ratio=inv, generator=generator, device=device)
    return {"boxes": boxes, "apply": coin(n, p, generator, device)}


def erase(x: Tensor, params: dict[str, Tensor], value: float = 0.0) -> Tensor:
    """Set each sample's box to ``value`` where ``apply`` (parameters from :func:`draw_erasing`)."""
    _check(x)
    _, _, H, W = x.shape
    top, left, h, w = params["boxes"].to(x.device).unbind(1)
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & params["apply"].to(x.device)[:, None, None]
    return torch.where(mask[:, None], x.new_full((), value), x)


# ---------------------------------------------------------------------------------------------- colour


def to_grayscale(x: Tensor, *, channels: int = 1) -> Tensor:
    """Luma (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B; a 1-channel image is its own luma) repeated to ``channels``.

    Returns (B, channels, H, W).
    """
    _check(x)
    if x.shape[1] == 3:
        r, g, b = x.unbind(1)
        luma = (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)
    elif x.shape[1] == 1:
        luma = x
    else:
        raise ValueError(f"to_grayscale needs 1 or 3 channels, got {x.shape[1]}")
    return luma if channels == 1 else luma.repeat(1, channels, 1, 1)


def grayscale_where(x: Tensor, mask: Tensor) -> Tensor:
    """Replace by their luma (keeping the channel count) the samples where ``mask`` (B,) bool is True."""
    _check(x)
    return _pick(mask, to_grayscale(x, channels=x.shape[1]), x)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1) (torchvision's formulas, batched)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    flat = maxc == minc
    delta = maxc - minc
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([torch.remainder(h / 6.0, 1.0), s, maxc], dim=1)


# row i (the sextant of the hue) -> indices into (v, q, p, t) for R, G, B
_SEXTANT = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) HSV (hue in [0, 1)) -> RGB, the inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.tensor(_SEXTANT, device=x.device)[i.long() % 6]  # (B, H, W, 3)
    return torch.stack([v, q, p, t], dim=1).gather(1, table.permute(0, 3, 1, 2)).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each RGB sample by ``shift`` (B,) turns (0.5 = 180 degrees); 1-channel: unchanged."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1).to(x.dtype), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's _blend: factor * x + (1 - factor) * other, clamped to [0, 1]; factor (B,)."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * other).clamp(0.0, 1.0)


def _factors(n: int, strength: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator, device)


def draw_color_jitter(
    n: int,
    *,
    channels: int,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    p: float = 1.0,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """torchvision's ColorJitter's per-sample parameters for ``n`` images of ``channels`` channels.

    Factors are uniform in [max(0, 1-s), 1+s], the hue shift uniform in [-hue, hue] (hue <= 0.5); a strength of 0
    skips its step (so all zeros is the identity). Saturation and hue are no-ops on 1-channel images. Applied to
    each sample with probability p (:func:`apply_color_jitter`).

    Returns:
        ``brightness``/``contrast``/``saturation`` factors (n,), ``hue`` shifts (n,) and ``apply`` (n,) bool, each
        only where that step runs (a strength above 0; saturation and hue on 3 channels; ``apply`` for p < 1).
    """
    for name, val in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        _check_range(name, val, val)
    _check_range("hue", hue, 0.5)
    device = device if device is not None else generator.device
    rgb = channels == 3
    out: dict[str, Tensor] = {}
    if brightness > 0:
        out["brightness"] = _factors(n, brightness, generator, device)
    if contrast > 0:
        out["contrast"] = _factors(n, contrast, generator, device)
    if saturation > 0 and rgb:
        out["saturation"] = _factors(n, saturation, generator, device)
    if hue > 0 and rgb:
        out["hue"] = _uniform(n, -hue, hue, generator, device)
    if p < 1.0:
        out["apply"] = coin(n, p, generator, device)
    return out


def apply_color_jitter(x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Colour jitter with drawn parameters (:func:`draw_color_jitter`): brightness, contrast, saturation, hue, in
    that fixed order (torchvision: random order), clamped to [0, 1]; the samples where ``apply`` is False are
    returned unchanged."""
    _check(x)
    out = x
    if "brightness" in params:
        out = _blend(out, torch.zeros_like(out), params["brightness"])
    if "contrast" in params:
        mean = to_grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
        out = _blend(out, mean, params["contrast"])
    if "saturation" in params:
        out = _blend(out, to_grayscale(out), params["saturation"])
    if "hue" in params:
        out = adjust_hue(out, params["hue"])
    return _pick(params["apply"], out, x) if "apply" in params else out


def draw_channel_perm(
    n: int, channels: int, generator: torch.Generator, device: torch.device | str | None = None
) -> Tensor:
    """Long (n, channels): an independent random permutation of the channels per sample."""
    device = device if device is not None else generator.device
    return torch.rand(n, channels, generator=generator, device=device).argsort(dim=1)


def permute_channels(x: Tensor, perm: Tensor) -> Tensor:
    """Reorder each sample's channels by its row of ``perm`` (n, C), as from :func:`draw_channel_perm`."""
    _check(x)
    return x.gather(1, perm[:, :, None, None].expand_as(x))


APPLY: dict[str, Callable[[Tensor, Any], Tensor]] = {
    "crop": crop_resize,
    "flip": flip_where,
    "gray": grayscale_where,
    "shuffle": permute_channels,
    "jitter": apply_color_jitter,
    "rotate": rotate,
    "zoom": zoom,
    "erase": erase,
}
"""A drawn parameter's name -> the pure op that applies it (the module docstring pairs each with its draw)."""


def apply_drawn(x: Tensor, params: dict[str, Any]) -> Tensor:
    """Apply drawn parameters to ``x`` in the order they were drawn (the dict's order), each key naming its op in
    :data:`APPLY`. Pure: a method's compiled step calls it with the parameters drawn just before."""
    for name, value in params.items():
        x = APPLY[name](x, value)
    return x


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """(x - mean) / std per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 2)))
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 2)))
    return (x - m) / s
