"""The yardsticks of scripts/benchmark.py besides the reference script: vaelab's model and
recipe (i) as a plain in-memory PyTorch loop, no framework, and (ii) through pythae 0.1.2's
``BaseTrainer`` where pythae is installed.

Same for both and vaelab's default run: the 784-256-256-32 MLP (the posterior's mu and logvar
from 256 features, the decoder mirrored), BCE summed over pixels from the decoder's logits
plus the closed-form KL, averaged over the batch's images; Adam lr 1e-3; gradient-norm
clipping at 1.0; batch 128; the 55 000 / 5000 split of ``vaelab.data.datamodule.hold_out``
(seed 42) with the validation ELBO every epoch; the test ELBO on the 10 000 test images at the
end (one z per image, as vaelab's ``test/loss``). The linear layers take the path vaelab's
``model.onednn_linear=auto`` takes on this machine (``--linear``), so that the kernels are the
same on every side and the comparison is of everything else.

The plain loop is the fastest eager loop we could write: the training images as one float
tensor in memory, a fresh ``randperm`` per epoch and one ``index_select`` per batch, fused
Adam, ``clip_grad_norm_`` (foreach), ``zero_grad(set_to_none=True)``, no host reads during an
epoch, denormals flushed; validation under ``no_grad`` in batches of 1000.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.data.files import ensure_files, load_split
from vaelab.science.fast_linear import OneDNNLinear, choose_onednn_linear

SHAPES = [(784, 256), (256, 256), (256, 64), (32, 256), (256, 256), (256, 784)]


def linear_class(choice: str, device: str, batch_size: int = 128) -> type[nn.Linear]:
    """nn.Linear or OneDNNLinear: ``auto`` decides as vaelab's default does on this machine."""
    if device != "cpu" or choice == "false":
        return nn.Linear
    if choice == "true":
        return OneDNNLinear
    return OneDNNLinear if choose_onednn_linear(SHAPES, batch_size)[0] else nn.Linear


class PlainVAE(nn.Module):
    def __init__(self, linear: type[nn.Linear] = nn.Linear, latent_dim: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(linear(784, 256), nn.ReLU(), linear(256, 256), nn.ReLU())
        self.to_posterior = linear(256, 2 * latent_dim)
        self.decoder = nn.Sequential(
            linear(latent_dim, 256), nn.ReLU(), linear(256, 256), nn.ReLU(), linear(256, 784)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image negative ELBO [B] of x [B, 784] in [0, 1], one z sample each."""
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
        return recon + kl


def mnist_split(data_root, val_size: int = 5000, split_seed: int = 42):
    """(train, val, test) float tensors [N, 784] in [0, 1]: vaelab's default split."""
    paths = ensure_files(data_root / "MNIST" / "raw", download_missing=False)
    train = torch.from_numpy(load_split(paths, "train", None)[0]).reshape(-1, 784)
    test = torch.from_numpy(load_split(paths, "test", None)[0]).reshape(-1, 784)
    # as vaelab.data.datamodule.hold_out: a seeded permutation, the first val_size held out
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    val, train = train[order[:val_size]], train[order[val_size:]]
    return tuple(t.float().div_(255) for t in (train, val, test))


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    total = sum(model(b).sum() for b in x.split(batch_size))
    model.train()
    return float(total) / len(x)


def train_epoch(model: nn.Module, optimizer, train: torch.Tensor, generator=None) -> None:
    """One epoch of the plain loop over ``train`` [N, 784]: batches of 128 in a fresh order."""
    order = torch.randperm(len(train), generator=generator, device=train.device)
    for idx in order.split(128):
        loss = model(train.index_select(0, idx)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()


def run_plain(
    data_root, epochs: int, seed: int, device: str = "cpu", linear: str = "auto", val_size=5000
):
    """The plain loop: returns fit and train samples/s, the test loss and the epochs' times."""
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    device = torch.device(device)
    train, val, test = (t.to(device) for t in mnist_split(data_root, val_size))
    cuda = device.type == "cuda"
    start_fit = time.perf_counter()
    model = PlainVAE(linear_class(linear, device.type)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator(device).manual_seed(seed)
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        train_epoch(model, optimizer, train, generator)
        if cuda:
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)
        val_loss = mean_loss(model, val)
    fit_seconds = time.perf_counter() - start_fit
    return {
        "fit_samples_per_sec": len(train) * epochs / fit_seconds,
        "train_samples_per_sec": len(train) * epochs / sum(epoch_seconds),
        "fit_seconds": fit_seconds,
        "epoch_seconds": epoch_seconds,
        "val_loss": val_loss,
        "test_loss": mean_loss(model, test),
        "linear": "oneDNN" if any(isinstance(m, OneDNNLinear) for m in model.modules()) else "nn",
    }


def pythae_missing() -> str | None:
    """Why pythae's trainer cannot run here, or None when it can."""
    try:
        import pythae  # noqa: F401
        from pythae.trainers import BaseTrainer  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure to import means: skip it
        return f"pythae 0.1.2 is not importable ({type(err).__name__}: {err})"[:200]
    return None


def run_pythae(
    data_root, epochs: int, seed: int, device: str = "cpu", linear: str = "auto", val_size=5000
):
    """pythae 0.1.2's BaseTrainer on the same model, split and recipe. pythae's trainer has no
    gradient clipping: its optimizer step is subclassed to clip at 1.0 as the others do.
    pythae's VAE takes BCE on the decoder's sigmoid outputs (its own recipe for bce)."""
    import tempfile

    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    torch.set_flush_denormal(True)
    layer = linear_class(linear, device)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(layer(784, 256), nn.ReLU(), layer(256, 256), nn.ReLU())
            self.to_posterior = layer(256, 64)

        def forward(self, x):
            mu, logvar = self.to_posterior(self.body(x.reshape(len(x), -1))).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                layer(32, 256), nn.ReLU(), layer(256, 256), nn.ReLU(), layer(256, 784)
            )

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)).view(-1, 1, 28, 28))

    class ClippingTrainer(BaseTrainer):
        def _optimizers_step(self, model_output=None):
            self.optimizer.zero_grad()
            model_output.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()

    torch.manual_seed(seed)
    train, val, test = (t.view(-1, 1, 28, 28) for t in mnist_split(data_root, val_size))
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        model = VAE(config, encoder=Encoder(), decoder=Decoder())
        trainer = ClippingTrainer(
            model=model,
            train_dataset=BaseDataset(train, torch.zeros(len(train))),
            eval_dataset=BaseDataset(val, torch.zeros(len(val))),
            training_config=BaseTrainerConfig(
                output_dir=out,
                num_epochs=epochs,
                learning_rate=1e-3,
                per_device_train_batch_size=128,
                per_device_eval_batch_size=1000,
                optimizer_cls="Adam",
                seed=seed,
                no_cuda=device != "cuda",
                steps_saving=None,
                steps_predict=None,
            ),
        )
        trainer.train()
        fit_seconds = time.perf_counter() - start
        best = trainer._best_model.eval()
        with torch.no_grad():
            test_loss = sum(
                float(best(
                    {"data": b.to(trainer.device)}).loss) * len(b) for b in test.split(1000)
            ) / len(test)  # fmt: skip
    return {
        "fit_samples_per_sec": len(train) * epochs / fit_seconds,
        "fit_seconds": fit_seconds,
        "test_loss": test_loss,
        "linear": "oneDNN" if layer is OneDNNLinear else "nn",
    }
