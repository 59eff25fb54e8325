"""A VAE with several stochastic layers (Burda et al. 2016, section 5): a hierarchy of latents.

With L layers of sizes ``latent_dim`` = [d_1, ..., d_L] (default [100, 50]):

    q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})
    p(x, z) = p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) p(x|z_1),   p(z_L) = N(0, I)

each conditional a diagonal Gaussian (p(x|z_1): ``likelihood``) whose parameters come from an
MLP: layer l's hidden widths ``hidden_dims[l]`` (default [[200, 200], [100, 100]]) for
q(z_l | .), mirrored for p(z_{l-1} | z_l) and p(x | z_1), with ``activation`` (tanh in the
paper). The latent groups are z1, ..., zL. The KL has no closed form (the prior of z_1 depends
on z_2): the seam estimates it by Monte Carlo, per group (log q(z_l|.) - log p(z_l|.)), and
there is no KL per latent dimension. The point summary of q for the figures and statistics
passes each layer's mean to the next (the means themselves have no closed form). A figure
that varies an upper layer (``sample.py``'s traversal and ``interpolation.layer``) takes
each layer below it at the mean of p(z_{l-1} | z_l) (``fill_below``), so the change reaches
the image.

    python train.py model=hvae model.latent_dim=[100,50] model.hidden_dims=[[200,200],[100,100]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.science.bounds import log_standard_normal
from vaelab.science.distributions import DiagonalGaussian, Latents, draw_normal
from vaelab.science.fast_linear import OneDNNLinear, choose_onednn_linear, linear_shapes
from vaelab.science.likelihoods import get_likelihood
from vaelab.science.networks import mlp
from vaelab.science.variants.base import LatentVariableModel


class HierarchicalPosterior:
    """q(z_1|x) q(z_2|z_1) ...: drawn layer after layer (``vaelab.science.distributions``)."""

    def __init__(self, first: DiagonalGaussian, nets: nn.ModuleList, names: list[str]):
        self.first, self.nets, self.names = first, nets, names

    def rsample(self, k: int | None = None, generator: torch.Generator | None = None):
        z, log_q = self.first.rsample(k, generator)
        zs, log_qs = [z], [log_q]
        for net in self.nets:
            gaussian = DiagonalGaussian(*net(zs[-1]).chunk(2, dim=-1))
            z, log_q = gaussian.rsample(None, generator)
            zs.append(z)
            log_qs.append(log_q)
        return dict(zip(self.names, zs, strict=True)), dict(zip(self.names, log_qs, strict=True))

    @property
    def mean(self) -> Latents:
        means = [self.first.mu]
        for net in self.nets:
            means.append(net(means[-1]).chunk(2, dim=-1)[0])
        return dict(zip(self.names, means, strict=True))


class HierarchicalPrior:
    """p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2), p(z_L) = N(0, I)."""

    def __init__(self, nets: nn.ModuleList, names: list[str], top: int, like: Tensor) -> None:
        self.nets, self.names, self.top, self.like = nets, names, top, like

    def log_prob(self, z: Latents) -> dict[str, Tensor]:
        out = {self.names[-1]: log_standard_normal(z[self.names[-1]])}
        for net, name, above in zip(self.nets, self.names[:-1], self.names[1:], strict=True):
            out[name] = DiagonalGaussian(*net(z[above]).chunk(2, dim=-1)).log_prob(z[name])
        return {name: out[name] for name in self.names}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Latents:
        z = {self.names[-1]: draw_normal((n, self.top), self.like, generator)}
        for net, name, above in reversed(
            list(zip(self.nets, self.names[:-1], self.names[1:], strict=True))
        ):
            z[name] = DiagonalGaussian(*net(z[above]).chunk(2, dim=-1)).rsample(None, generator)[0]
        return {name: z[name] for name in self.names}


def _text(value) -> str:
    """A list as it is typed on the command line: ``[[200,200],[100,100]]``."""
    return str(value).replace(" ", "")


class HVAE(LatentVariableModel):
    """Stochastic layers of sizes ``latent_dim`` with MLPs of widths ``hidden_dims`` (one list
    per layer) between them; ``architecture`` must be ``mlp``. ``onednn_linear``,
    ``batch_norm``, ``likelihood``: as for ``vae.VAE``."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        latent_dim: Sequence[int] = (100, 50),
        activation: str = "tanh",
        architecture: str = "mlp",
        batch_norm: bool = False,
        likelihood: str = "bernoulli",
        likelihood_args: dict | None = None,
        onednn_linear: bool | str = True,
    ) -> None:
        super().__init__()
        if onednn_linear == "auto":  # the faster path for these layer sizes on this machine
            with torch.device("meta"):
                copy = HVAE(input_shape, hidden_dims, latent_dim, activation, architecture)
            onednn_linear = choose_onednn_linear(linear_shapes(copy), 128)[0]
        sizes = [latent_dim] if isinstance(latent_dim, int) else list(latent_dim)
        widths = [list(h) if isinstance(h, Sequence) else [h] for h in hidden_dims]
        if architecture != "mlp":
            raise VaelabError(f"model.architecture={architecture!r}: model=hvae is an mlp only")
        if len(widths) != len(sizes):
            # what fits either way: the widths cut or repeated to the layers, or sizes halved
            fit_widths = [widths[min(i, len(widths) - 1)] for i in range(len(sizes))]
            fit_sizes = [max(sizes[0] // 2**i, 1) for i in range(len(widths))]
            raise VaelabError(
                f"model.latent_dim={_text(sizes)} has {len(sizes)} stochastic layer(s) but "
                f"model.hidden_dims={_text(widths)} has widths for {len(widths)}: give one "
                f"list of widths per layer (e.g. model.hidden_dims={_text(fit_widths)}) or "
                f"one size per list (e.g. model.latent_dim={_text(fit_sizes)})"
            )
        self.input_shape = tuple(input_shape)
        self.likelihood = get_likelihood(likelihood, self.input_shape, likelihood_args)
        names = [f"z{i + 1}" for i in range(len(sizes))]
        self.latent_sizes = dict(zip(names, sizes, strict=True))
        linear = OneDNNLinear if onednn_linear else nn.Linear
        pixels = math.prod(self.input_shape)

        def gaussian_net(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
            return nn.Sequential(
                mlp([n_in, *hidden], batch_norm, linear, activation), linear(hidden[-1], n_out)
            )

        inputs = [pixels, *sizes[:-1]]
        self.encoders = nn.ModuleList(
            gaussian_net(n_in, h, 2 * d) for n_in, h, d in zip(inputs, widths, sizes, strict=True)
        )
        self.flatten = nn.Flatten()
        # p(z_l | z_{l+1}) for l < L, mirrored widths of layer l+1
        self.decoders = nn.ModuleList(
            gaussian_net(sizes[i + 1], widths[i + 1][::-1], 2 * sizes[i])
            for i in range(len(sizes) - 1)
        )
        self.to_pixels = gaussian_net(sizes[0], widths[0][::-1], pixels)
        self.names = names

    def posterior(self, x: Tensor) -> HierarchicalPosterior:
        first = DiagonalGaussian(*self.encoders[0](self.flatten(x)).chunk(2, dim=-1))
        return HierarchicalPosterior(first, self.encoders[1:], self.names)

    def prior(self) -> HierarchicalPrior:
        top = self.latent_sizes[self.names[-1]]
        return HierarchicalPrior(self.decoders, self.names, top, self.device_like())

    def decode_logits(self, z: Latents) -> Tensor:
        return self.to_pixels(z[self.names[0]]).view(-1, *self.input_shape)

    def fill_below(self, z: Latents, group: str) -> Latents:
        """z_{l-1}, ..., z_1 below ``group`` = z_l, each the mean of p(z_{l-1} | z_l) given
        the one above it (the image decodes z_1 only)."""
        z = dict(z)
        for level in range(self.names.index(group), 0, -1):
            above, below = self.names[level], self.names[level - 1]
            z[below] = self.decoders[level - 1](z[above]).chunk(2, dim=-1)[0]
        return z
