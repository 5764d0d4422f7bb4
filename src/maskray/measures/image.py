"""Pure image measures over tensors: paired fidelity (PSNR, SSIM, MS-SSIM) and texture (radial power spectrum).

Images are float ``(N, 1, H, W)`` in ``[-1, 1]``, so the default ``data_range`` is 2. Values are per image
(shape ``(N,)``); aggregation is the caller's.

- PSNR and SSIM are MONAI's (``PSNRMetric``, ``SSIMMetric``). SSIM follows Wang et al. 2004 with a Gaussian
  window of 11 and sigma 1.5, K1 = 0.01, K2 = 0.03. Its luminance term depends on where zero lies, so images
  are first mapped from ``[-data_range/2, data_range/2]`` to ``[0, 1]``: the value is the usual SSIM of the
  image on ``[0, 1]``. PSNR does not depend on the offset. An exact copy has an infinite PSNR (returned as
  ``inf``; see :func:`maskray.evaluation.metrics.summarize` for how it is counted).
- The radial power spectrum is the azimuthal mean of ``|FFT(x - mean x)|^2 / (H W)`` over rings of integer
  radius in cycles per image, ``r = 1 .. min(H, W) // 2`` (DC left out). Smooth images lose power at high
  ``r``; :func:`spectrum_distance` compares two sets by their mean log10 spectra (Durall et al. 2020 use
  the same azimuthal integral to show that generated images miss high frequencies).
"""

from __future__ import annotations

import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

SSIM_DESCRIPTION = ("SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03, "
                    "images mapped to [0, 1]")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of float ``(N, C, H, W)`` images spanning ``data_range``. Returns ``(N,)``;
    ``inf`` where the two images are identical."""
    _check_pair(x, y)
    return PSNRMetric(max_val=data_range, reduction="none")(x.float(), y.float()).view(-1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5) of ``(N, C, H, W)`` images on
    ``[-data_range/2, data_range/2]``, computed on ``[0, 1]``. Returns ``(N,)``."""
    _check_pair(x, y)
    a = x.float() / data_range + 0.5
    b = y.float() / data_range + 0.5
    m = SSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5,
                   reduction="none")
    return m(a, b).view(-1)


def radial_power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Azimuthally averaged power spectrum of ``(N, 1, H, W)`` images. Returns float64 ``(N, R)`` with
    ``R = min(H, W) // 2``: column ``r - 1`` is the mean power at radius ``r`` cycles per image."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) images, got {tuple(x.shape)}")
    n, _, h, w = x.shape
    v = x[:, 0].double()
    v = v - v.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(v).abs().pow(2) / (h * w)
    fy = torch.fft.fftfreq(h, d=1.0 / h).double()
    fx = torch.fft.fftfreq(w, d=1.0 / w).double()
    radius = torch.sqrt(fy.view(-1, 1) ** 2 + fx.view(1, -1) ** 2).round().long()
    r_max = min(h, w) // 2
    keep = (radius >= 1) & (radius <= r_max)
    idx = radius[keep] - 1
    counts = torch.bincount(idx, minlength=r_max).double()
    out = torch.zeros(n, r_max, dtype=torch.float64)
    out.index_add_(1, idx, power[:, keep])
    return out / counts.clamp_min(1)


def spectrum_distance(real: torch.Tensor, fake: torch.Tensor, eps: float = 1e-12) -> float:
    """Root-mean-square difference, over radii, of the mean log10 radial power spectra of two image sets
    ``(N, 1, H, W)`` and ``(M, 1, H, W)`` of one size. In decades of power: 0 for sets with the same mean
    spectrum, 1 when one set has ten times the power of the other at every radius."""
    if real.shape[-2:] != fake.shape[-2:]:
        raise ValueError(f"image sizes differ: {tuple(real.shape[-2:])} and {tuple(fake.shape[-2:])}")
    a = torch.log10(radial_power_spectrum(real) + eps).mean(0)
    b = torch.log10(radial_power_spectrum(fake) + eps).mean(0)
    return float(torch.sqrt(((a - b) ** 2).mean()))


def ms_ssim_scales(side: int, kernel_size: int = 11) -> int:
    """The most scales (1 to 5) MS-SSIM can use on images whose shorter side is ``side``: MONAI's own check
    (``side // max(1, scales - 1) ** 2 > kernel_size - 1``, in ``monai.metrics.regression.compute_ms_ssim``)
    and a window that still fits the coarsest scale (``side // 2 ** (scales - 1) >= kernel_size``)."""
    fits = [s for s in range(1, 6) if side // max(1, s - 1) ** 2 > kernel_size - 1
            and side // 2 ** (s - 1) >= kernel_size]
    if not fits:
        raise ValueError(f"MS-SSIM needs images of at least {kernel_size} px a side, got {side}")
    return max(fits)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image multi-scale SSIM (Wang et al. 2003), Gaussian window 11, sigma 1.5, of ``(N, 1, H, W)`` images
    in ``[-1, 1]`` (computed on ``[0, 1]``). Uses the standard five scales where the image allows (side >= 176)
    and otherwise the largest number that fits (:func:`ms_ssim_scales`: 4 from 99 px, 3 from 44 px), with the
    standard weights renormalised. Returns ``(N,)``."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = ms_ssim_scales(min(x.shape[-2:]))
    w = tuple(v / sum(weights[:scales]) for v in weights[:scales])
    m = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", kernel_size=11,
                             kernel_sigma=1.5, weights=w, reduction="none")
    return m((x.float() + 1) / 2, (y.float() + 1) / 2).view(-1)
