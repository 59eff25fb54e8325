"""Evaluation metrics: torchmetrics ``Metric``s that accumulate over a split (used alike at
validation, at the end of training and by eval.py), the importance-sampled likelihood, and pure
functions of tensors. Log-likelihoods and losses are in nats per image.

A network passed here has the interface of ``vaelab.science.variants.base.LatentVariableModel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchmetrics import Metric

# Burda et al. 2015: unit u is active when Var_x(E_q[z_u|x]) exceeds this
ACTIVE_UNIT_THRESHOLD = 0.01


class ElboMeans(Metric):
    """Exact per-image means of the ELBO terms over a split, summed across DDP ranks.

    One ``update`` per batch with ``terms`` [len(TERMS), B]: a single small metric instead of
    one torchmetrics ``MeanMetric`` per term, which costs three times the per-step overhead.
    """

    TERMS = ("loss", "recon", "kl")
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(len(self.TERMS)), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, terms: Tensor) -> None:
        self.sums += terms.detach().float().sum(1)
        self.count += terms.shape[1]

    def compute(self) -> dict[str, Tensor]:
        return dict(zip(self.TERMS, self.sums / self.count, strict=True))


class LatentStats(Metric):
    """Latent statistics over a split, summed across DDP ranks: per latent dimension the
    variance over images of the posterior mean (Burda et al.'s active units) and, when the
    prior factorizes, the mean KL.

    ``update(mu [B, D], kl_per_dim [B, D] or None)``; ``compute()`` -> ``mu_variance`` [D]
    (over the N images, divided by N), ``active_units`` (count of variances above
    ``threshold``) and, if every update had one, ``kl_per_dim`` [D] nats (sums to the mean KL).
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = ACTIVE_UNIT_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold
        for name in ("mu_sum", "mu_sq_sum", "kl_sum"):
            self.add_state(name, torch.zeros(latent_dim, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kl_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, kl_per_dim: Tensor | None = None) -> None:
        mu = mu.detach().double()
        self.mu_sum += mu.sum(0)
        self.mu_sq_sum += mu.square().sum(0)
        self.count += mu.shape[0]
        if kl_per_dim is not None:
            self.kl_sum += kl_per_dim.detach().double().sum(0)
            self.kl_count += mu.shape[0]

    def compute(self) -> dict[str, Tensor]:
        mean = self.mu_sum / self.count
        variance = (self.mu_sq_sum / self.count - mean.square()).clamp(min=0).float()
        out = {"mu_variance": variance, "active_units": (variance > self.threshold).sum().float()}
        if self.kl_count == self.count:
            out["kl_per_dim"] = (self.kl_sum / self.count).float()
        return out


class ClassMeans(Metric):
    """Mean of a per-image value for each class 0..num_classes-1 over a split (summed across
    DDP ranks): ``update(values [B], labels [B])``; ``compute()`` -> [num_classes], NaN for a
    class with no images."""

    full_state_update = False

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(num_classes, dtype=torch.float64), "sum")
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), "sum")

    def update(self, values: Tensor, labels: Tensor) -> None:
        labels = labels.long()
        self.sums.index_add_(0, labels, values.detach().double())
        self.counts.index_add_(0, labels, torch.ones_like(self.counts[labels]))

    def compute(self) -> Tensor:
        return (self.sums / self.counts).float()


class NegativeLogLikelihood(Metric):
    """-log p(x) in nats per image, importance sampled with k samples
    (``dataset_log_likelihood``), averaged over a split and summed across DDP ranks.
    ``update(net, x, seed)``: the seed picks the batch's draws. ``compute()`` -> (mean NLL,
    whether every pixel seen was 0 or 1: whether a Bernoulli NLL is a likelihood)."""

    full_state_update = False

    def __init__(
        self, k: int = 5000, max_rows: int = 4096, batch_size: int = 100, workers=None
    ) -> None:
        super().__init__()
        self.k, self.max_rows, self.batch_size, self.workers = k, max_rows, batch_size, workers
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("non_binary", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, net, x: Tensor, seed: int = 0) -> None:
        log_px = dataset_log_likelihood(
            net, x, self.k, self.max_rows, self.batch_size, seed, self.workers
        )
        self.total -= log_px.double().sum()
        self.count += len(x)
        self.non_binary += (~((x == 0) | (x == 1))).sum()

    def compute(self) -> tuple[Tensor, bool]:
        return (self.total / self.count).float(), bool(self.non_binary == 0)


_malloc_threshold_raised = False


def _reuse_freed_memory(device: torch.device) -> None:
    """glibc returns each freed block above its mmap threshold (128 KB at first) to the OS, so
    every chunk's multi-MB tensors would page-fault afresh: a third more CPU time here.
    Freeing one 30 MB block raises glibc's dynamic threshold to 30 MB (once per process), so
    that the chunks' memory is reused instead. Harmless with other allocators.

    Not undone afterwards: it is the state glibc's own adaptation reaches after any large
    free, and the only way back (``mallopt``) would pin the threshold at 128 KB and switch
    that adaptation off, slowing whatever the process trains next (a sweep's next job)."""
    global _malloc_threshold_raised
    if device.type == "cpu" and not _malloc_threshold_raised:
        torch.empty(30 << 18)  # 30 MB of float32, freed at once
        _malloc_threshold_raised = True


def iwae_log_likelihood(
    net,
    x: Tensor,
    k: int = 5000,
    max_rows: int = 4096,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled estimate of log p(x) (the IWAE bound, Burda et al. 2015), [B] nats:

        log p(x) ~= logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)],  z_k ~ q(z|x),

    with the network's own posterior, prior and likelihood (``net.log_importance_weights``).
    It is a lower bound in expectation that tightens as k grows, and equals log p(x) for any k
    when q is the exact posterior. The prior is built once, each image encoded once; the B*k
    samples are decoded ``max_rows`` at a time (several images per chunk when k is small, a
    slice of one image's samples when k is large), with a running logsumexp over chunks, so
    memory is O(max_rows * pixels) whatever B and k.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _reuse_freed_memory(x.device)
    prior = net.prior()
    k_chunk = min(k, max_rows)
    b_chunk = max(1, max_rows // k_chunk)
    out = []
    for i in range(0, len(x), b_chunk):
        xi = x[i : i + b_chunk]
        q = net.posterior(xi)
        total = None
        for j in range(0, k, k_chunk):
            log_w = net.log_importance_weights(xi, min(k_chunk, k - j), q, prior, generator)
            chunk = torch.logsumexp(log_w, dim=1)
            total = chunk if total is None else torch.logaddexp(total, chunk)
        out.append(total - math.log(k))
    return torch.cat(out)


def dataset_log_likelihood(
    net,
    x: Tensor,
    k: int = 5000,
    max_rows: int = 4096,
    batch_size: int = 100,
    seed: int = 0,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """``iwae_log_likelihood`` of many images x [N, *shape] -> [N] nats, in batches of
    ``batch_size`` images, batch i drawing its samples from a generator seeded with
    (seed, i): the result does not depend on ``workers``. ``on_batch(n_images)`` is called
    after each batch (a progress bar).

    On CPU the batches run on ``workers`` threads (default: torch's thread count) with one
    intra-op thread each. Hand-rolled because torch's own parallelism splits every matmul
    across the cores and waits for all of them at each op: on a shared machine one busy core
    makes that 4x slower than one thread, while independent batches simply progress.
    """
    device = x.device
    workers = 1 if device.type != "cpu" else (workers or torch.get_num_threads())

    def batch(i: int) -> Tensor:
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
        with torch.inference_mode():
            out = iwae_log_likelihood(net, x[i : i + batch_size], k, max_rows, gen)
        if on_batch is not None:
            on_batch(len(out))
        return out

    starts = range(0, len(x), batch_size)
    if workers <= 1:
        return torch.cat([batch(i) for i in starts])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # set in each worker too: MKL's thread count is per thread
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return torch.cat(list(pool.map(batch, starts)))
    finally:
        torch.set_num_threads(threads)


def class_histogram(probs: Tensor) -> Tensor:
    """Fraction of items whose most probable class is c: probs [N, C] -> [C], sums to 1."""
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])
    return counts.double() / len(probs)


def entropy(p: Tensor) -> float:
    """Entropy in nats of a distribution p [C] (0 log 0 = 0); log C when uniform."""
    p = p.double()
    return float(-(p * p.clamp_min(1e-300).log()).sum())


def mean_top_confidence(probs: Tensor) -> float:
    """Mean over items of the largest class probability: probs [N, C] -> in [1/C, 1]."""
    return float(probs.max(1).values.double().mean())


class _Features(torch.nn.Module):
    """Identity "feature extractor" for features that are already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] and [M, F]:
    ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in squared feature units. Computed by
    torchmetrics' FrechetInceptionDistance (float64 moments) given the features as they are."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Features(real_features.shape[1]))
    fid.update(real_features, real=True)
    fid.update(fake_features, real=False)
    return float(fid.compute())
