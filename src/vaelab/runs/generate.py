"""Generation entry point behind ``sample.py``: prior samples, an interpolation between two
test images and a latent traversal, as PNGs in the run dir."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from vaelab.errors import VaelabError
from vaelab.evaluation.plotting import grid_figure, image_grid, save_figure
from vaelab.runs.evaluate import TestImages, load_data, load_model, resolve_device
from vaelab.science.distributions import flatten, unflatten
from vaelab.science.latent import interpolate, latent_group

log = logging.getLogger(__name__)


def _check_indices(indices, n: int, name: str) -> list[int]:
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < n]
    if bad or not indices:
        raise VaelabError(f"{name}={indices} must be indices of test images, between 0 and {n - 1}")
    return indices


def traversal_grid(net, base_mu: torch.Tensor, dim: int, span: float, steps: int):
    """Decoded z that equal each base point [R, D] (all latent groups side by side) but for
    dimension ``dim``, which runs from -span to +span in ``steps``, and for the groups the
    generative path computes from its group (a hierarchy's lower layers: at their
    conditional means, ``fill_below``): images [R * steps, *image], row by row."""
    values = torch.linspace(-span, span, steps, device=base_mu.device)
    z = base_mu.unsqueeze(1).repeat(1, steps, 1)
    z[:, :, dim] = values
    group, _ = latent_group(net.latent_sizes, dim)
    return net.decode(net.fill_below(unflatten(z.flatten(0, 1), net.latent_sizes), group))


def _below(net, group: str) -> list[str]:
    """The latent groups before ``group`` (a hierarchy's layers below it)."""
    names = list(net.latent_sizes)
    return names[: names.index(group)]


def _check_layer(net, layer: str | None) -> None:
    if layer is not None and layer not in net.latent_sizes:
        raise VaelabError(
            f"interpolation.layer={layer} is not a latent group of this model; give one of "
            f"{', '.join(net.latent_sizes)}, or null for all of them"
        )


def interpolation_path(net, mu: torch.Tensor, steps: int, layer: str | None) -> torch.Tensor:
    """Images [steps, *image] along the straight line between two posterior means mu [2, D]:
    every group interpolated (``layer`` None), or with the groups below ``layer`` at their
    conditional means given it (``fill_below``); a layer the model lacks is a ``VaelabError``."""
    _check_layer(net, layer)
    z = unflatten(interpolate(mu[0], mu[1], steps), net.latent_sizes)
    return net.decode(z if layer is None else net.fill_below(z, layer))


@torch.inference_mode()
def generate(cfg: DictConfig) -> dict[str, Path]:
    """Write samples.png, interpolation.png and traversal.png; return their paths."""
    if int(cfg.num_samples) < 1:
        raise VaelabError(f"num_samples={cfg.num_samples} must be at least 1")
    device = resolve_device(cfg.get("device", "auto"))
    model = load_model(cfg.get("ckpt_path"), device)
    test = TestImages(load_data(cfg, model))
    net = model.net
    _check_layer(net, cfg.interpolation.get("layer"))  # before any image is written
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    paths = {name: out_dir / f"{name}.png" for name in ("samples", "interpolation", "traversal")}

    samples = net.sample(int(cfg.num_samples), generator=gen)
    nrow = math.ceil(math.sqrt(len(samples)))
    title = f"{len(samples)} samples from the prior"
    save_figure(grid_figure(image_grid(samples, nrow=nrow), title), paths["samples"])

    a, b = _check_indices(cfg.interpolation.indices, len(test), "interpolation.indices")[:2]
    x, y = test[torch.tensor([a, b])]
    mu = flatten(net.posterior(x.to(device)).mean)
    steps = int(cfg.interpolation.steps)
    layer = cfg.interpolation.get("layer")
    path = interpolation_path(net, mu, steps, layer)
    row = torch.cat([x[:1].to(device), path, x[1:].to(device)])
    title = (
        f"Test images {a} (digit {int(y[0])}) and {b} (digit {int(y[1])}): originals at the ends"
    )
    if layer is not None and _below(net, layer):
        below = ", ".join(_below(net, layer))
        title += f"\n{layer} interpolated; {below} at the conditional means given it"
    save_figure(grid_figure(image_grid(row, nrow=len(row)), title), paths["interpolation"])

    rows = _check_indices(cfg.traversal.indices, len(test), "traversal.indices")
    dim = cfg.traversal.dim
    if dim is None:  # the most informative dimension: largest mean KL over some test images
        q = net.posterior(test[torch.arange(min(len(test), 1000))][0].to(device))
        kl = net.kl_per_dimension(q)
        # without a KL per dimension: the dimension whose posterior point varies most
        dim = int((kl.mean(0) if kl is not None else flatten(q.mean).var(0)).argmax())
    if not 0 <= int(dim) < net.latent_dim:
        raise VaelabError(
            f"traversal.dim={dim} must be between 0 and {net.latent_dim - 1} (the latent size)"
        )
    base = flatten(net.posterior(test[torch.tensor(rows)][0].to(device)).mean)
    steps, span = int(cfg.traversal.steps), float(cfg.traversal.range)
    images = traversal_grid(net, base, int(dim), span, steps)
    title = f"Latent dimension {dim} from {-span:g} to {span:g}, one test image per row"
    if len(net.latent_sizes) > 1:  # which layer, and what the layers below it do
        group, index = latent_group(net.latent_sizes, int(dim))
        title = f"Latent dimension {dim} ({group} unit {index}) from {-span:g} to {span:g}"
        below = _below(net, group)
        fixed = f"{', '.join(below)} at the conditional means given {group}"
        title += ", one test image per row\n" + (
            fixed if below else "the other layers at the posterior means"
        )
    save_figure(grid_figure(image_grid(images, nrow=steps), title), paths["traversal"])
    for name, p in paths.items():
        log.info("Wrote %s: %s", name, p)
    return paths
