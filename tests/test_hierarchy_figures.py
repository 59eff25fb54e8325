"""A hierarchy seen layer by layer: a traversal or interpolation of an upper layer reaches the
image through the lower layers' conditional means, and the figures name and mark the layers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.evaluation.plotting import bar_figure
from vaelab.lit.callbacks import VAEFigures
from vaelab.runs.eval_report import make_figures
from vaelab.runs.generate import interpolation_path, traversal_grid
from vaelab.science.distributions import flatten, unflatten
from vaelab.science.latent import describe_groups, latent_group
from vaelab.science.variants.hvae import HVAE
from vaelab.science.variants.vae import VAE


@pytest.fixture
def hvae() -> HVAE:
    torch.manual_seed(0)
    return HVAE(hidden_dims=[[16], [8]], latent_dim=[4, 2], onednn_linear=False).eval()


@torch.no_grad()
def test_a_traversal_of_an_upper_layer_changes_the_image_through_z1s_conditional_mean(hvae):
    base = flatten(hvae.posterior(torch.rand(2, 1, 28, 28)).mean)  # [2, 6]: z1 then z2
    images = traversal_grid(hvae, base, dim=4, span=3.0, steps=5)  # z2's first unit
    rows = images.view(2, 5, -1)
    assert (rows[:, 0] - rows[:, -1]).abs().max() > 1e-3  # not the same image along a row
    # what it decodes: z2 as set, z1 the mean of p(z1 | z2)
    z2 = base[:, 4:].unsqueeze(1).repeat(1, 5, 1)
    z2[:, :, 0] = torch.linspace(-3, 3, 5)
    z1 = hvae.decoders[0](z2.flatten(0, 1)).chunk(2, dim=-1)[0]
    assert torch.allclose(images, hvae.decode({"z1": z1, "z2": z2.flatten(0, 1)}))


@torch.no_grad()
def test_a_traversal_of_z1_keeps_the_other_layer_where_it_was(hvae):
    base = flatten(hvae.posterior(torch.rand(1, 1, 28, 28)).mean)
    images = traversal_grid(hvae, base, dim=1, span=2.0, steps=3)
    z = base.repeat(3, 1)
    z[:, 1] = torch.linspace(-2, 2, 3)
    assert torch.allclose(images, hvae.decode(unflatten(z, hvae.latent_sizes)))


@torch.no_grad()
def test_interpolating_an_upper_layer_goes_down_the_generative_path(hvae):
    mu = flatten(hvae.posterior(torch.rand(2, 1, 28, 28)).mean)
    every_layer = interpolation_path(hvae, mu, 4, None)
    through_z2 = interpolation_path(hvae, mu, 4, "z2")
    z = unflatten(torch.stack([mu[0] + t * (mu[1] - mu[0]) for t in (0, 1 / 3, 2 / 3, 1)]),
                  hvae.latent_sizes)  # fmt: skip
    assert torch.allclose(every_layer, hvae.decode(z), atol=1e-6)
    z["z1"] = hvae.decoders[0](z["z2"]).chunk(2, dim=-1)[0]
    assert torch.allclose(through_z2, hvae.decode(z), atol=1e-6)
    assert not torch.allclose(through_z2, every_layer)


def test_interpolating_a_layer_the_model_lacks_is_one_line():
    net = VAE(hidden_dims=[8], latent_dim=3, onednn_linear=False)
    with pytest.raises(VaelabError) as err:
        interpolation_path(net, torch.zeros(2, 3), 4, "z2")
    assert str(err.value) == (
        "interpolation.layer=z2 is not a latent group of this model; give one of z, or null "
        "for all of them"
    )


def test_a_model_whose_groups_decode_side_by_side_fills_nothing():
    net = VAE(hidden_dims=[8], latent_dim=3, onednn_linear=False)
    z = {"z": torch.randn(2, 3)}
    assert net.fill_below(z, "z") is z


def test_the_layers_of_the_flattened_latent_vector_are_named():
    sizes = {"z1": 4, "z2": 2}
    assert [latent_group(sizes, d) for d in (0, 3, 4, 5)] == [
        ("z1", 0), ("z1", 3), ("z2", 0), ("z2", 1)
    ]  # fmt: skip
    with pytest.raises(IndexError):
        latent_group(sizes, 6)
    assert describe_groups(sizes) == "z1 (dims 0-3), z2 (dims 4-5)"
    assert describe_groups({"z": 32}) == ""


def test_the_latent_space_title_names_a_hierarchys_layers(hvae):
    title = VAEFigures()._latent_title(SimpleNamespace(net=hvae), 3)
    assert title == "Latent space (PCA of q's means: z1 (dims 0-3), z2 (dims 4-5)), epoch 3"


def test_per_dimension_bars_are_marked_by_layer():
    fig = bar_figure([1.0] * 6, range(6), "t", "x", "y", groups={"z1": 4, "z2": 2})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["z1", "z2"]
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(3.5, 3.5)]


def test_the_active_units_figure_of_a_hierarchy_counts_each_layer():
    metrics = {
        "test/active_unit_variance": [0.5, 0.0, 0.2, 0.0, 0.3, 0.0],
        "test/active_units": 3,
        "test/active_units_per_group": {"z1": 2, "z2": 1},
        "active_unit_threshold": 0.01,
        "test/recon_per_class": [1.0] * 10,
    }
    figure = make_figures(metrics, None, {"z1": 4, "z2": 2})["active_units"]
    assert figure.axes[0].get_title().startswith("Active units: 3 of 6; z1 2 of 4, z2 1 of 2 ")
    assert [t.get_text() for t in figure.axes[0].texts] == ["z1", "z2"]
