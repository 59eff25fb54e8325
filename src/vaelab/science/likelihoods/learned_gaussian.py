"""A Gaussian decoder with a learned scale (after Rybkin, Daniilidis & Levine 2021, "Simple and
Effective VAE Training with Calibrated Decoders", sigma-VAE): an example of a likelihood with
a learned parameter (``model.likelihood=learned_gaussian``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.science.bounds import log_normal
from vaelab.science.likelihoods import (
    Likelihood,
    _expand_x,
    _per_image,
    register_likelihood,
)


@register_likelihood("learned_gaussian")
class LearnedGaussian(Likelihood):
    """log N(x; sigmoid(logits), sigma^2) summed over pixels, nats, with log sigma learned:
    one per pixel (``per_pixel``, a parameter of ``input_shape``) or one for the image, as
    sigma-VAE's. log sigma is kept above ``min_log_scale`` by a soft clip,
    ``min + softplus(log sigma - min)`` (sigma-VAE's ``softclip``), and starts at
    ``init_log_scale``. A normalized density of real-valued pixels."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        per_pixel: bool = True,
        init_log_scale: float = 0.0,
        min_log_scale: float = -6.0,
    ) -> None:
        super().__init__(input_shape)
        shape = self.input_shape if per_pixel else (1, 1, 1)
        self.raw_log_scale = nn.Parameter(torch.full(shape, float(init_log_scale)))
        self.min_log_scale = min_log_scale

    def log_scale(self) -> Tensor:
        """log sigma [C, H, W] (or [1, 1, 1]), soft-clipped from below."""
        low = self.min_log_scale
        return low + F.softplus(self.raw_log_scale - low)

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        mean = torch.sigmoid(logits)
        logvar = (2 * self.log_scale()).expand_as(mean)
        # per pixel: the Gaussian's density over a last dimension of size 1
        per_pixel = log_normal(_expand_x(logits, x)[..., None], mean[..., None], logvar[..., None])
        return _per_image(per_pixel, logits, x)

    def normalization(self, data_binary: bool) -> tuple[bool, str]:
        return True, "normalized: Gaussian density of real-valued pixels, learned scale"

    def picture(self) -> Tensor | None:
        """sigma per pixel, divided by its largest value (white: the largest sigma)."""
        scale = self.log_scale().detach().exp().expand(self.input_shape)
        return scale / scale.max()

    @property
    def picture_title(self) -> str:
        scale = self.log_scale().detach().exp()
        return (
            f"Learned sigma of p(x|z) per pixel: {float(scale.min()):.3g} (black) to "
            f"{float(scale.max()):.3g} (white)"
        )
