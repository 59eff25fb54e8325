"""Evaluation entry point behind ``eval.py``: load a checkpoint, compute the metrics of
``vaelab.evaluation.metrics`` on the test set, write metrics.json, figures and TensorBoard
scalars, and print a table. The maths is in ``vaelab.evaluation.metrics``; this module
orchestrates."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from vaelab.data.files import ensure_files, load_split
from vaelab.errors import VaelabError
from vaelab.evaluation import metrics as M
from vaelab.evaluation.classifier import Images, cache_dirs, classify, load_or_train
from vaelab.lit.module import VAELitModule
from vaelab.runs.checkpoints import error_reason
from vaelab.runs.eval_report import make_figures, print_table, write_figures, write_tensorboard
from vaelab.science.likelihoods import is_binary

log = logging.getLogger(__name__)

CKPT_HINT = "logs/train/runs/<run>/checkpoints/last.ckpt"


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise VaelabError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def load_model(ckpt_path: str | None, device: torch.device) -> VAELitModule:
    """The VAELitModule of a train.py checkpoint, in eval mode on ``device``."""
    if not ckpt_path:
        raise VaelabError(f"ckpt_path is required: pass ckpt_path={CKPT_HINT}")
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise VaelabError(
            f"ckpt_path={ckpt_path} does not exist; pass a checkpoint written by train.py, "
            f"e.g. {CKPT_HINT}"
        )
    try:
        model = VAELitModule.load_from_checkpoint(path, map_location=device)
    except Exception as err:  # noqa: BLE001 - any failure means: not a usable checkpoint
        reason = error_reason(err)
        raise VaelabError(
            f"ckpt_path={ckpt_path} is not a readable VAELitModule checkpoint ({reason}); "
            "pass one written by train.py"
        ) from None
    return model.eval().to(device)


def load_data(cfg: DictConfig, model: VAELitModule):
    """The datamodule of ``cfg.data``, set up, after checking its images fit the model."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    image_shape = (1, *datamodule.data_test.images.shape[1:])
    if tuple(model.net.input_shape) != image_shape:
        raise VaelabError(
            f"the checkpoint's model takes images {tuple(model.net.input_shape)} but "
            f"data {cfg.data.dataset} has {image_shape}; evaluate on the data it was trained on"
        )
    return datamodule


def _batches(n: int, batch_size: int):
    return (torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


@torch.inference_mode()
def elbo_and_latents(model, data, n: int, batch_size: int, samples: int, gen) -> dict:
    """Per test image: ELBO terms (recon averaged over ``samples`` z), mu, logvar, label."""
    net, hp = model.net, model.hparams
    device = next(net.parameters()).device
    names = ("loss", "recon", "kl", "mu", "logvar", "y")
    parts: dict[str, list] = {k: [] for k in names}
    for idx in _batches(n, batch_size):
        x, y = data[idx]
        x = x.to(device)
        terms = M.elbo_terms_averaged(net, x, samples, hp.beta, generator=gen)
        mu, logvar = net.encode(x)
        for key, value in zip(names, (*terms, mu, logvar, y), strict=True):
            parts[key].append(value.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def test_nll(model, x: torch.Tensor, nll_cfg: DictConfig, seed: int) -> torch.Tensor:
    """-log p(x) [N] in nats of images x [N, *shape] by importance sampling (``nll_cfg.k``
    samples per image), with a progress bar."""
    bar = tqdm(total=len(x), desc=f"NLL (k={nll_cfg.k})", unit="image", mininterval=2)
    log_px = M.dataset_log_likelihood(
        model.net, x, nll_cfg.k, nll_cfg.max_rows,
        nll_cfg.batch_size, seed, nll_cfg.get("workers"), on_batch=bar.update,
    )  # fmt: skip
    bar.close()
    return -log_px.cpu()


@torch.inference_mode()
def sample_quality(model, classifier, real_x: torch.Tensor, train_x, num: int, gen) -> dict:
    """Classifier scores of ``num`` decoded prior samples (pixel means) and the Fréchet
    distance of their classifier features to those of the real test images ``real_x``; for
    scale, the same distance between as many training images ``train_x`` and ``real_x``."""
    net = model.net
    device = next(net.parameters()).device
    samples = torch.cat(
        [
            net.decode(torch.randn(len(i), net.latent_dim, generator=gen, device=device)).cpu()
            for i in _batches(num, 1000)
        ]
    )
    probs, fake = classify(classifier, samples)
    _, real = classify(classifier, real_x)
    _, train = classify(classifier, train_x[: len(real_x)])
    hist = M.class_histogram(probs)
    return {
        "samples/num": num,
        "samples/class_histogram": hist.tolist(),
        "samples/class_entropy": M.entropy(hist),
        "samples/max_entropy": math.log(len(hist)),
        "samples/mean_confidence": M.mean_top_confidence(probs),
        "samples/frechet_distance": M.frechet_distance(real, fake),
        "samples/frechet_distance_train_vs_test": M.frechet_distance(real, train),
        "_samples": samples[:64],
    }


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test set of ``cfg.data``; return the metrics."""
    device = resolve_device(cfg.get("device", "auto"))
    model = load_model(cfg.get("ckpt_path"), device)
    datamodule = load_data(cfg, model)
    out_dir = Path(cfg.paths.output_dir)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    test = datamodule.data_test
    n = len(test) if cfg.get("max_images") is None else min(int(cfg.max_images), len(test))
    hp = model.hparams
    data_binary = is_binary(test.images[:n].float() / 255.0)
    normalized, note = model.net.likelihood.normalization(data_binary)
    metrics: dict = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "likelihood": model.net.likelihood.name,
        "beta": float(hp.beta),
        "latent_dim": int(model.net.latent_dim),
        "num_test_images": n,
        "data_binary": data_binary,
    }
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    per_image = elbo_and_latents(model, test, n, cfg.batch_size, cfg.elbo_samples, gen)
    seconds["elbo"] = time.perf_counter() - start
    latent = M.LatentStats(model.net.latent_dim, cfg.active_units.threshold)
    latent.update(per_image["mu"], model.net.kl_per_dimension(per_image["mu"], per_image["logvar"]))
    stats = latent.compute()
    metrics.update(
        {
            "test/loss": float(per_image["loss"].mean()),
            "test/recon": float(per_image["recon"].mean()),
            "test/kl": float(per_image["kl"].mean()),
            "test/elbo": float(-(per_image["recon"] + per_image["kl"]).mean()),
            "elbo_samples": int(cfg.elbo_samples),
            "test/active_units": int(stats["active_units"]),
            "active_unit_threshold": float(cfg.active_units.threshold),
            "test/active_unit_variance": stats["mu_variance"].tolist(),
            **({"test/kl_per_dim": stats["kl_per_dim"].tolist()} if "kl_per_dim" in stats else {}),
            "test/recon_per_class": M.mean_per_class(per_image["recon"], per_image["y"]).tolist(),
        }
    )

    if cfg.nll.k > 0:
        start = time.perf_counter()
        x = test[torch.arange(n)][0].to(device)
        nll = test_nll(model, x, cfg.nll, int(cfg.seed))
        seconds["nll"] = time.perf_counter() - start
        metrics.update(
            {
                "test/nll": float(nll.mean()),
                "nll_k": int(cfg.nll.k),
                "nll_normalized": normalized,
                "nll_note": note,
            }
        )

    samples = None
    if cfg.sample_quality.enabled:
        start = time.perf_counter()
        train = training_images(datamodule)
        classifier, info = classifier_for(cfg, datamodule, train)
        real_x = test[torch.arange(n)][0]
        quality = sample_quality(
            model, classifier, real_x, train.x, cfg.sample_quality.num_samples, gen
        )
        samples = quality.pop("_samples")
        metrics.update(quality)
        metrics.update(
            {
                "classifier/test_accuracy": info["accuracy"],
                "classifier/path": info["path"],
                "classifier/trained_now": info["trained"],
            }
        )
        if info["accuracy"] < 0.99:
            log.warning("digit classifier test accuracy %.4f is below 0.99", info["accuracy"])
        seconds["sample_quality"] = time.perf_counter() - start
    metrics.update({f"seconds/{k}": round(v, 2) for k, v in seconds.items()})

    write_metrics(metrics, out_dir / "metrics.json")
    figures = make_figures(metrics, samples)
    write_tensorboard(metrics, figures, samples, out_dir / "tensorboard")
    write_figures(figures, out_dir / "figures")
    print_table(metrics)
    return metrics


def training_images(dm) -> Images:
    """The whole training file of the datamodule's data set (its hold-out included)."""
    paths = ensure_files(dm.raw_dir, dm.mirrors, dm.download, dm.search_dirs)
    images, labels = load_split(paths, "train", dm.checksums)
    return Images(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def classifier_for(cfg: DictConfig, datamodule, train: Images):
    """The cached (or freshly trained) digit classifier of the datamodule's data."""
    sq = cfg.sample_quality
    test = Images(datamodule.data_test.images, datamodule.data_test.labels)
    dirs = cache_dirs(sq.cache_dir, datamodule.data_dir, datamodule.dataset)
    return load_or_train(
        train, test, dirs, epochs=sq.classifier_epochs, seed=int(cfg.seed), read_only=1
    )


def write_metrics(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("Metrics written to %s", path)
