"""Evaluation behind ``eval.py``: the checkpoint's model tested by a Lightning Trainer with the
``EvaluationMetrics`` callback (the same metrics as at the end of training), on the data the
model was trained on, plus the quality of its samples by a digit classifier; writes
metrics.json, figures and TensorBoard scalars, and prints a table."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import TensorDataset

from vaelab.data.datamodule import InMemoryImages, MNISTDataModule
from vaelab.data.files import ensure_files, load_split
from vaelab.errors import VaelabError
from vaelab.evaluation import metrics as M
from vaelab.evaluation.classifier import Images, classify
from vaelab.lit.callbacks import EvaluationMetrics
from vaelab.lit.classifier import cache_dirs, load_or_train
from vaelab.runs.checkpoints import error_reason, module_class, read_checkpoint
from vaelab.runs.eval_report import make_figures, print_table, write_figures, write_tensorboard
from vaelab.runs.report import write_metrics

log = logging.getLogger(__name__)

CKPT_HINT = "logs/train/runs/<run>/checkpoints/last.ckpt"
# what eval.py and sample.py take from the checkpoint's data module unless given on the
# command line: which data set, and how its pixels were binarized
DATA_FROM_CHECKPOINT = (
    "dataset",
    "mirrors",
    "checksums",
    "search_dirs",
    "binarize",
    "binarize_seed",
)


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise VaelabError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def load_model(ckpt_path: str | None, device: torch.device) -> L.LightningModule:
    """The LightningModule of a train.py checkpoint (``VAELitModule`` or the subclass it was
    saved from), in eval mode on ``device``."""
    if not ckpt_path:
        raise VaelabError(f"ckpt_path is required: pass ckpt_path={CKPT_HINT}")
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise VaelabError(
            f"ckpt_path={ckpt_path} does not exist; pass a checkpoint written by train.py, "
            f"e.g. {CKPT_HINT}"
        )
    cls = module_class(read_checkpoint(path, "ckpt_path"), "ckpt_path", ckpt_path)
    try:  # the class the checkpoint was saved from: a subclass loads as itself
        model = cls.load_from_checkpoint(path, map_location=device)
    except VaelabError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure means: not a usable checkpoint
        reason = error_reason(err)
        raise VaelabError(
            f"ckpt_path={ckpt_path}: {cls.__name__} cannot be rebuilt from it ({reason}); "
            "pass a checkpoint written by train.py with this version of the code"
        ) from None
    return model.eval().to(device)


def command_line_keys() -> set[str]:
    """The config keys (and groups) set on this run's command line; empty outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    overrides = HydraConfig.get().overrides.task
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def saved_data_settings(ckpt_path: str | Path) -> dict:
    """The data module's arguments saved in a train.py checkpoint ({} in older ones)."""
    checkpoint = read_checkpoint(ckpt_path, "ckpt_path")
    return dict(checkpoint.get("datamodule_hyper_parameters") or {})


def saved_data_class(ckpt_path: str | Path) -> str | None:
    """The class path of the data module a train.py checkpoint was trained with (None in
    older ones)."""
    return read_checkpoint(ckpt_path, "ckpt_path").get("datamodule_class")


def same_class(a: str, b: str | None) -> bool:
    """Whether the dotted paths ``a`` and ``b`` name the same class (a class is often
    re-exported: ``vaelab.data.MNISTDataModule``)."""
    if b is None:
        return False
    try:
        return a == b or get_object(a) is get_object(b)
    except Exception:  # noqa: BLE001 - one of them does not import: not the same
        return False


def data_config(cfg: DictConfig) -> DictConfig:
    """``cfg.data`` with the data set and binarization of the checkpoint's training run, except
    where the command line sets them (``data=...`` or ``data.<key>=...``). A checkpoint
    trained with another data module class than ``cfg.data``'s is given that data module,
    built from its saved arguments (``data=...`` on the command line chooses another)."""
    data = cfg.data.copy()
    from_checkpoint = cfg.get("data_from_checkpoint", True)
    saved = saved_data_settings(cfg.ckpt_path) if from_checkpoint else {}
    given = command_line_keys()
    if "data" in given:
        return data
    target = saved_data_class(cfg.ckpt_path) if from_checkpoint else None
    if target is not None and not same_class(target, data.get("_target_")):
        log.info("Data module of the checkpoint: %s", target)
        rebuilt = OmegaConf.create({"_target_": target, **saved})
        for key in (k.removeprefix("data.") for k in given if k.startswith("data.")):
            OmegaConf.update(rebuilt, key, OmegaConf.select(data, key), force_add=True)
        return rebuilt
    if not saved:
        return data
    taken = {
        key: saved[key]
        for key in DATA_FROM_CHECKPOINT
        if key in saved and f"data.{key}" not in given and saved[key] != data.get(key)
    }
    with open_dict(data):
        data.merge_with(OmegaConf.create(taken))
    if taken:
        log.info(
            "Data settings of the checkpoint: %s", ", ".join(f"{k}={v}" for k, v in taken.items())
        )
    return data


class TestImages:
    """The test split of any data module (its ``test_dataloader``'s data set), indexed by a
    tensor of positions: ``test[indices]`` -> (x [B, *image], y [B])."""

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        self.dataset = datamodule.test_dataloader().dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.dataset, InMemoryImages | TensorDataset):  # whole batches at once
            return self.dataset[indices.to(getattr(self.dataset, "images", indices).device)]
        items = [self.dataset[int(i)] for i in indices]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        return x, torch.as_tensor([int(item[1]) for item in items])


def load_data(cfg: DictConfig, model: L.LightningModule):
    """The datamodule of the checkpoint's data (``data_config``), set up for testing, after
    checking its images fit the model."""
    try:
        datamodule = instantiate(data_config(cfg), _convert_="all")
    except InstantiationException as err:
        raise VaelabError(
            f"ckpt_path={cfg.ckpt_path}: its data module cannot be rebuilt "
            f"({error_reason(err.__cause__ or err)}); give data=<option> for the data it was "
            "trained on"
        ) from None
    datamodule.prepare_data()
    datamodule.setup("test")
    image_shape = tuple(TestImages(datamodule)[torch.tensor([0])][0].shape[1:])
    if tuple(model.net.input_shape) != image_shape:
        name = datamodule.hparams.get("dataset", type(datamodule).__name__)
        raise VaelabError(
            f"the checkpoint's model takes images {tuple(model.net.input_shape)} but "
            f"data {name} has {image_shape}; evaluate on the data it was trained on"
        )
    return datamodule


def _batches(n: int, batch_size: int):
    return (torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


@torch.inference_mode()
def sample_quality(model, classifier, real_x: torch.Tensor, train_x, num: int, gen) -> dict:
    """Classifier scores of ``num`` decoded prior samples (pixel means) and the Fréchet
    distance of their classifier features to those of the real test images ``real_x``; for
    scale, the same distance between as many training images ``train_x`` and ``real_x``."""
    net = model.net
    device = next(net.parameters()).device
    samples = torch.cat([net.sample(len(i), gen).to(device).cpu() for i in _batches(num, 1000)])
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


def evaluation_trainer(cfg: DictConfig, callback: L.Callback) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` on ``cfg.device`` (auto, cpu or cuda), testing at most
    ``cfg.max_images`` images, with ``callback`` and no logger or checkpoints."""
    resolve_device(cfg.get("device", "auto"))  # a clear line when cuda is asked for and absent
    accelerator = {"auto": "auto", "cpu": "cpu"}.get(str(cfg.get("device", "auto")), "gpu")
    max_images = cfg.get("max_images")
    return instantiate(
        cfg.trainer,
        accelerator=accelerator,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_test_batches=math.ceil(max_images / cfg.batch_size) if max_images else None,
    )


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test set of its data; return the metrics."""
    model = load_model(cfg.get("ckpt_path"), torch.device("cpu"))
    datamodule = load_data(cfg, model)
    if hasattr(datamodule, "eval_batch_size"):
        datamodule.eval_batch_size = int(cfg.batch_size)
    out_dir = Path(cfg.paths.output_dir)
    callback = EvaluationMetrics(
        nll_k=int(cfg.nll.k),
        max_rows=int(cfg.nll.max_rows),
        nll_batch_size=int(cfg.nll.batch_size),
        nll_workers=cfg.nll.get("workers"),
        elbo_samples=max(1, int(cfg.elbo_samples)),
        active_unit_threshold=float(cfg.active_units.threshold),
        max_images=cfg.get("max_images"),
        seed=int(cfg.seed),
    )
    trainer = evaluation_trainer(cfg, callback)
    L.seed_everything(int(cfg.seed), verbose=False)  # the module's draws of z: repeatable
    start = time.perf_counter()
    trainer.test(model, datamodule=datamodule, verbose=False)
    seconds = {"test": time.perf_counter() - start}
    hp = model.hparams
    metrics: dict = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "likelihood": model.net.likelihood.name,
        "beta": float(hp.beta),
        "latent_dim": int(model.net.latent_dim),
        "latent_sizes": {g: int(d) for g, d in model.net.latent_sizes.items()},
        "data": {k: datamodule.hparams.get(k) for k in ("dataset", "binarize")},
        **callback.results,
    }
    device = trainer.strategy.root_device
    model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    n = metrics["num_test_images"]

    samples = None
    mnist_format = isinstance(datamodule, MNISTDataModule)
    if cfg.sample_quality.enabled and not mnist_format:
        log.info(
            "sample_quality: skipped; its digit classifier trains on MNIST-format files "
            "(vaelab.data.MNISTDataModule), and this data module is %s",
            type(datamodule).__name__,
        )
    if cfg.sample_quality.enabled and mnist_format:
        test = datamodule.data_test
        start = time.perf_counter()
        train = training_images(datamodule)
        classifier, info = classifier_for(cfg, datamodule, train)
        real_x = test[torch.arange(n, device=test.images.device)][0].cpu()
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
    figures = make_figures(metrics, samples, dict(model.net.latent_sizes))
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
