"""The decoder's likelihoods p(x|z): modules with one ``log_prob`` used by training,
validation and the NLL alike. Pixels x lie in [0, 1]; the decoder outputs logits.

A likelihood is registered by name with ``@register_likelihood("<name>")``; ``bernoulli``,
``gaussian`` and ``continuous_bernoulli`` are here, and every other module of this folder is
imported below, so a new likelihood is one file in it (``learned_gaussian.py``: one with a
learned parameter). ``model.likelihood=<name>`` picks one and ``model.likelihood_args`` gives
its constructor's arguments; it also receives the images' shape (``input_shape``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.registry import refuse_unknown_arguments, registration

LIKELIHOODS: dict[str, type[Likelihood]] = {}


def register_likelihood(name: str):
    """Class decorator: ``model.likelihood=<name>`` builds this class."""

    return registration(LIKELIHOODS, "likelihood", name)


class Likelihood(nn.Module):
    """p(x|z) given the decoder's logits. Subclasses define ``log_prob`` and ``normalization``.

    ``log_prob(logits, x)``: logits [B, *image] -> [B], or [B, K, *image] (K decodings of each
    image) -> [B, K]; x [B, *image]. Nats, summed over pixels.

    A module: a likelihood may hold parameters (trained with the network's, saved in its
    checkpoint). ``input_shape``: the images' (C, H, W), for a parameter per pixel.
    """

    name = ""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)

    def picture(self) -> Tensor | None:
        """An image [C, H, W] in [0, 1] of what the likelihood learned (a per-pixel scale, ...)
        that the figures show every epoch as ``val/likelihood`` (and ``likelihood.png``), with
        ``picture_title``; None (the default): nothing to show."""
        return None

    picture_title = ""

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, logits: Tensor) -> Tensor:
        """What the figures show for a decoding: sigmoid(logits), in [0, 1]."""
        return torch.sigmoid(logits)

    def normalization(self, data_binary: bool) -> tuple[bool, str]:
        """Whether ``log_prob`` is a normalized density of such data (so that the
        importance-sampled NLL is a likelihood), and a note saying why (not)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""


def _per_image(per_pixel: Tensor, logits: Tensor, x: Tensor) -> Tensor:
    """Sum over the image dimensions: [B, *image] -> [B], [B, K, *image] -> [B, K]."""
    extra = logits.dim() - x.dim()  # 1 when there are K decodings per image
    return per_pixel.flatten(1 + extra).sum(-1)


def _expand_x(logits: Tensor, x: Tensor) -> Tensor:
    return x.unsqueeze(1).expand_as(logits) if logits.dim() == x.dim() + 1 else x


def _largest_divisor_up_to(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """log Bernoulli(x | sigmoid(logits)): minus the binary cross-entropy, from the logits
    (stable). A normalized density only for binary x; for grey levels it is the training loss
    of the reference script, not a likelihood."""

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        if logits.dim() == x.dim():
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
            return -per_pixel.flatten(1).sum(1)
        return self._log_prob_many(logits.flatten(2), x.flatten(1))

    @staticmethod
    def _log_prob_many(logits: Tensor, x: Tensor) -> Tensor:
        """logits [B, K, P], x [B, P] -> [B, K]. The same value as the cross-entropy, in the
        form that is about 1.7x faster on CPU for the k=5000 likelihood, where it is most of
        the cost besides the decoder's matmuls: x*l - softplus(l) with sum_p x_p l_p as one
        batched matrix-vector product, and softplus(l) = relu(l) - log sigmoid(|l|), where
        sigmoid(|l|) lies in [0.5, 1] so that groups of up to 100 of them can be multiplied
        before one log (no underflow)."""
        xl = torch.bmm(logits, x.unsqueeze(-1).to(logits.dtype)).squeeze(-1)
        relu_sum = logits.clamp_min(0).sum(-1)
        group = _largest_divisor_up_to(logits.shape[-1], 100)
        sig = logits.abs().sigmoid_().view(*logits.shape[:-1], -1, group)
        return xl - relu_sum + sig.prod(-1).log().sum(-1)

    def normalization(self, data_binary: bool) -> tuple[bool, str]:
        if data_binary:
            return True, "normalized: Bernoulli decoder on binary pixels"
        return False, "NOT a normalized likelihood: Bernoulli decoder on grey-level pixels"


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """Minus the squared error between x and sigmoid(logits), summed over pixels: the
    reference script's MSE variant, log N(x; mean, 1/2) without its constant
    (0.5 log pi per pixel). Not normalized: its "NLL" compares models with this likelihood only."""

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        per_pixel = F.mse_loss(torch.sigmoid(logits), _expand_x(logits, x), reduction="none")
        return -_per_image(per_pixel, logits, x)

    def normalization(self, data_binary: bool) -> tuple[bool, str]:
        return False, "NOT normalized: the gaussian decoder's summed squared error"


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(eta) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) with natural
    parameter eta = logits: C = eta / tanh(eta / 2), elementwise, in nats.

    Stable in float32 for any eta (torch's ``ContinuousBernoulli`` clamps its probabilities,
    so beyond |eta| ~ 15 its density no longer integrates to 1):
    log C = log|eta| - log(-expm1(-|eta|)) + log1p(exp(-|eta|)) for |eta| >= 0.1, and the
    series log 2 + eta^2/12 - 7 eta^4/1440 (error below 1e-9) near 0, where the logs cancel.
    """
    a = logits.abs()
    small = a < 0.1
    safe = torch.where(small, torch.ones_like(a), a)  # no log(0), no NaN gradient at 0
    far = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    near_sq = torch.where(small, logits, torch.zeros_like(logits)).square()
    near = math.log(2.0) + near_sq / 12 - 7 * near_sq.square() / 1440
    return torch.where(small, near, far)


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """log CB(x | logits) = log Bernoulli(x | sigmoid(logits)) + log C(logits): a normalized
    density of pixels in [0, 1], computed stably in float32 for any logits."""

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        xs = _expand_x(logits, x).to(logits.dtype)
        per_pixel = xs * logits - F.softplus(logits) + continuous_bernoulli_log_norm(logits)
        return _per_image(per_pixel, logits, x)

    def normalization(self, data_binary: bool) -> tuple[bool, str]:
        return True, "normalized: continuous Bernoulli density of pixels in [0, 1]"


def likelihood_arguments(cls: type) -> list[str]:
    """The arguments ``model.likelihood_args`` may give ``cls`` (``input_shape`` aside: the
    variant passes it)."""
    names: list[str] = []
    for owner in cls.__mro__:
        if "__init__" not in vars(owner) or owner in (nn.Module, object):
            continue
        params = inspect.signature(owner.__init__).parameters
        names += [
            n
            for n, p in params.items()
            if n not in ("self", "input_shape", *names)
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def get_likelihood(
    name: str, input_shape: Sequence[int] = (1, 28, 28), arguments: dict | None = None
) -> Likelihood:
    """The likelihood registered as ``name`` (``LIKELIHOODS``) for images of ``input_shape``,
    built with ``arguments`` (``model.likelihood_args``)."""
    if name not in LIKELIHOODS:
        raise VaelabError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}")
    cls, arguments = LIKELIHOODS[name], dict(arguments or {})
    refuse_unknown_arguments("likelihood", name, arguments, likelihood_arguments(cls))
    return cls(input_shape=input_shape, **arguments)


for _module in pkgutil.iter_modules(__path__):  # each file of this folder registers its own
    importlib.import_module(f"{__name__}.{_module.name}")
