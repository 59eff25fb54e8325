"""Evaluation metrics as pure functions of tensors (and, for the sampled ones, of a network).

Log-likelihoods and losses are in nats per image. A network passed here needs
``encode(x) -> (mu, logvar)`` and, unless a ``log_px_given_z`` function is given,
``decode_logits(z)``: ``vaelab.science.models.VAE`` has both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from vaelab.science.losses import ElboTerms, kl_divergence, kl_per_dimension, reconstruction_loss

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
"""log p(x|z): (z [B, K, D], x [B, *shape]) -> [B, K] in nats, K decodings of each image."""

ACTIVE_UNIT_THRESHOLD = 0.01


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x | sigmoid(logits)) summed over pixels: logits [B, K, P], x [B, P] with
    values in [0, 1] -> [B, K] in nats. Equals -binary_cross_entropy_with_logits(...).sum(-1).

    Written out because it is most of the cost of the k=5000 likelihood besides the decoder's
    matmuls, and this form is about 1.7x faster on CPU than ``softplus`` or the BCE:
    x*l - softplus(l) with sum_p x_p l_p as one batched matrix-vector product, and
    softplus(l) = relu(l) - log sigmoid(|l|), where sigmoid(|l|) lies in [0.5, 1] so that
    groups of up to 100 of them can be multiplied before one log (no underflow).
    """
    xl = torch.bmm(logits, x.unsqueeze(-1).to(logits.dtype)).squeeze(-1)
    relu_sum = logits.clamp_min(0).sum(-1)
    group = _largest_divisor_up_to(logits.shape[-1], 100)
    sig = logits.abs().sigmoid_().view(*logits.shape[:-1], -1, group)
    return xl - relu_sum + sig.prod(-1).log_().sum(-1)


def _largest_divisor_up_to(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def decoder_log_prob(logits: Tensor, x: Tensor, likelihood: str = "bernoulli") -> Tensor:
    """log p(x|z) of the model's likelihood, consistent with its training loss
    (``vaelab.science.losses.reconstruction_loss``): logits [B, K, P], x [B, P] -> [B, K] in nats.

    bernoulli: a normalized density only for binary x (for grey levels it is the training
      loss, not a likelihood). gaussian: -squared error summed over pixels, the training loss;
      NOT normalized (the log-partition constant is omitted), so its "NLL" compares models
      with the same likelihood only. Other likelihoods of ``vaelab.science.losses``: minus their
      reconstruction loss.
    """
    if likelihood == "bernoulli":
        return bernoulli_log_prob(logits, x)
    b, k, p = logits.shape
    x_rows = x.unsqueeze(1).expand(b, k, p).reshape(b * k, p)
    return -reconstruction_loss(logits.reshape(b * k, p), x_rows, likelihood).view(b, k)


def model_log_likelihood(net, likelihood: str = "bernoulli") -> LogLikelihood:
    """log p(x|z) of ``net``'s decoder: (z [B, K, D], x [B, *shape]) -> [B, K]."""

    def log_px_given_z(z: Tensor, x: Tensor) -> Tensor:
        b, k, d = z.shape
        logits = net.decode_logits(z.reshape(b * k, d)).reshape(b, k, -1)
        return decoder_log_prob(logits, x.reshape(b, -1), likelihood)

    return log_px_given_z


_malloc_threshold_raised = False


def _reuse_freed_memory(device: torch.device) -> None:
    """glibc returns each freed block above its mmap threshold (128 KB at first) to the OS, so
    every chunk's multi-MB tensors would page-fault afresh: a third more CPU time here.
    Freeing one 30 MB block raises glibc's dynamic threshold to 30 MB (once per process), so
    that the chunks' memory is reused instead. Harmless with other allocators."""
    global _malloc_threshold_raised
    if device.type == "cpu" and not _malloc_threshold_raised:
        torch.empty(30 << 18)  # 30 MB of float32, freed at once
        _malloc_threshold_raised = True


def _posterior_samples(
    mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """k reparameterized samples z ~ q(z|x) per image, [B, k, D], and
    log p(z) - log q(z|x) [B, k] for each (the 2*pi constants cancel)."""
    eps = torch.randn(
        (mu.shape[0], k, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype
    )
    z = torch.addcmul(mu.unsqueeze(1), eps, torch.exp(0.5 * logvar).unsqueeze(1))
    log_ratio = 0.5 * (eps.square() - z.square()).sum(-1) + 0.5 * logvar.sum(-1, keepdim=True)
    return z, log_ratio


def iwae_log_likelihood(
    net,
    x: Tensor,
    k: int = 5000,
    likelihood: str = "bernoulli",
    log_px_given_z: LogLikelihood | None = None,
    max_rows: int = 4096,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled estimate of log p(x) (the IWAE bound, Burda et al. 2015), [B] nats:

        log p(x) ~= logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)],  z_k ~ q(z|x).

    It is a lower bound in expectation that tightens as k grows, and equals log p(x) for any
    k when q is the exact posterior. x [B, *shape] is encoded once; the B*k samples are
    decoded ``max_rows`` at a time (several images per chunk when k is small, a slice of one
    image's samples when k is large), with a running logsumexp over chunks, so memory is
    O(max_rows * pixels) whatever B and k. ``log_px_given_z`` replaces the decoder (see
    ``LogLikelihood``); by default it is ``net.decode_logits`` with ``likelihood``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    log_px_given_z = log_px_given_z or model_log_likelihood(net, likelihood)
    mu, logvar = net.encode(x)
    _reuse_freed_memory(mu.device)
    k_chunk = min(k, max_rows)
    b_chunk = max(1, max_rows // k_chunk)
    out = []
    for i in range(0, len(x), b_chunk):
        xi, mui, lvi = x[i : i + b_chunk], mu[i : i + b_chunk], logvar[i : i + b_chunk]
        total = torch.full((len(xi),), -math.inf, device=mu.device, dtype=mu.dtype)
        for j in range(0, k, k_chunk):
            z, log_ratio = _posterior_samples(mui, lvi, min(k_chunk, k - j), generator)
            log_w = log_px_given_z(z, xi) + log_ratio
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=1))
        out.append(total - math.log(k))
    return torch.cat(out)


def dataset_log_likelihood(
    net,
    x: Tensor,
    k: int = 5000,
    likelihood: str = "bernoulli",
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
            out = iwae_log_likelihood(
                net, x[i : i + batch_size], k, likelihood, None, max_rows, gen
            )
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


def elbo_terms_averaged(
    net,
    x: Tensor,
    samples: int = 1,
    likelihood: str = "bernoulli",
    beta: float = 1.0,
    log_px_given_z: LogLikelihood | None = None,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """Negative beta-ELBO per image with the reconstruction term averaged over ``samples``
    draws of z ~ q(z|x) (the KL is in closed form): ElboTerms(loss, recon, kl), each [B] nats.
    recon = -mean_s log p(x|z_s); with beta=1, -loss is the ELBO."""
    log_px_given_z = log_px_given_z or model_log_likelihood(net, likelihood)
    mu, logvar = net.encode(x)
    z, _ = _posterior_samples(mu, logvar, samples, generator)
    recon = -log_px_given_z(z, x).mean(1)
    kl = kl_divergence(mu, logvar)
    return ElboTerms(recon + beta * kl, recon, kl)


def mean_kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """Mean over images of KL(q(z_d|x) || N(0, 1)) for each latent dimension d:
    mu, logvar [N, D] -> [D] nats. Sums to the mean total KL."""
    return kl_per_dimension(mu, logvar).mean(0)


def active_units(mu: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, Tensor]:
    """Active units (Burda et al. 2015): unit u is active when Var_x(E_q[z_u|x]) > threshold.
    mu [N, D] posterior means over a data set -> (count, variances [D]); the variance is
    over the N images (divided by N)."""
    variances = mu.var(0, correction=0)
    return int((variances > threshold).sum()), variances


def mean_per_class(values: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Mean of values [N] for each label in 0..num_classes-1 (labels [N]) -> [num_classes];
    NaN for a class with no items."""
    labels = labels.long()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=values.device)
    sums.index_add_(0, labels, values.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    return (sums / counts).to(values.dtype)


def nll_label(likelihood: str, data_binary: bool) -> tuple[bool, str]:
    """Whether -log p(x|z) of ``likelihood`` is a normalized density of the data (so that
    the importance-sampled NLL is a likelihood), and a note saying why (not)."""
    if likelihood == "bernoulli":
        if data_binary:
            return True, "normalized: Bernoulli decoder on binary pixels"
        return False, "NOT a normalized likelihood: Bernoulli decoder on grey-level pixels"
    if likelihood == "continuous_bernoulli":
        return True, "normalized: continuous Bernoulli density of pixels in [0, 1]"
    if likelihood == "gaussian":
        return False, "NOT normalized: the gaussian decoder's summed squared error"
    return False, f"likelihood {likelihood!r}: normalization unknown"


def is_binary(x: Tensor) -> bool:
    """True when every value of x is 0 or 1."""
    return bool(((x == 0) | (x == 1)).all())


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
