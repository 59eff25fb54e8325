"""The reference script, runnable: what ``scripts/benchmark.py`` measures vaelab against.

    python scripts/reference_vae.py [--epochs 20] [--data-root DIR] [--out DIR] [--device cuda]

A plain-PyTorch VAE training script in the style of pytorch/examples' ``vae/main.py``, with
the reference configuration: per-sample Dataset as torchvision's MNIST + ToTensor (uint8 ->
PIL image -> float tensor), ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``,
the 784-256-256-32 MLP with a sigmoid decoder, BCE summed over pixels + KL, Adam 1e-3,
gradient-norm clipping 1.0, seed 42; on ``--device cuda`` the model and each batch go to the
GPU, from pinned memory, as the example does. Each epoch it trains on the 60 000 training images
(printing the loss every 10 batches), evaluates the 10 000 test images and saves
``reconstruction_<epoch>.png`` (8 test images above their reconstructions) and
``sample_<epoch>.png`` (64 samples of the prior) into ``--out``, as the example does with
torchvision's ``save_image`` (here PIL: torchvision is not a dependency).

Only torch, numpy and PIL are imported, and the data files are read directly, so that its
whole-process time (``benchmark.py --whole``) is the script's own.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_split(raw: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) from the IDX files in ``raw``."""
    images_file, labels_file = FILES[split]
    images = np.frombuffer(gzip.decompress((raw / images_file).read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((raw / labels_file).read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 28, 28), labels


class ReferenceMNIST(Dataset):
    """Per-sample access as torchvision's MNIST + ToTensor: uint8 -> PIL image -> float tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(1, 28, 28).float() / 255
        return x, int(self.labels[i])


class ReferenceVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 256)
        self.fc_mu, self.fc_logvar = nn.Linear(256, 32), nn.Linear(256, 32)
        self.fc3, self.fc4, self.fc5 = nn.Linear(32, 256), nn.Linear(256, 256), nn.Linear(256, 784)

    def encode(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x.view(-1, 784)))))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return torch.sigmoid(self.fc5(F.relu(self.fc4(F.relu(self.fc3(z))))))

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def reference_loss(recon, x, mu, logvar):
    """Summed over pixels and latents, mean over the batch (nats per image)."""
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / len(x)


def save_grid(images: torch.Tensor, nrow: int, path: Path) -> None:
    """Images [N, 784] in [0, 1] as one PNG, ``nrow`` per row (as torchvision's save_image)."""
    images = images.view(-1, 28, 28)
    rows = -(-len(images) // nrow)
    grid = torch.zeros(rows * 28, nrow * 28)
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        grid[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28] = image
    Image.fromarray((grid * 255).round().byte().numpy(), mode="L").save(path)


def train_epoch(model, optimizer, loader, epoch: int, device, log_interval: int | None = 10):
    """One epoch of training; the mean loss (nats per image). Prints the batch's loss every
    ``log_interval`` batches (None: never)."""
    model.train()
    total = 0.0
    for batch_idx, (x, _) in enumerate(loader):
        x = x.to(device)
        recon, mu, logvar = model(x)
        loss = reference_loss(recon, x, mu, logvar)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        total += loss.item() * len(x)
        if log_interval and batch_idx % log_interval == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * len(x)}/{len(loader.dataset)}]"
                  f"\tLoss: {loss.item():.6f}")  # fmt: skip
    return total / len(loader.dataset)


def test_epoch(model, loader, epoch: int, out: Path | None, device) -> float:
    """The mean loss (nats per image) over ``loader``; saves the first batch's
    reconstructions into ``out`` (None: not)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            x = x.to(device)
            recon, mu, logvar = model(x)
            total += reference_loss(recon, x, mu, logvar).item() * len(x)
            if i == 0 and out is not None:
                n = min(len(x), 8)
                comparison = torch.cat([x[:n].view(n, 784), recon[:n]]).cpu()
                save_grid(comparison, n, out / f"reconstruction_{epoch}.png")
    return total / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data"))
    parser.add_argument("--out", default="results")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    raw = Path(args.data_root) / "MNIST" / "raw"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = ReferenceMNIST(*read_split(raw, "train"))
    test = ReferenceMNIST(*read_split(raw, "test"))
    pin = device.type == "cuda"
    loader = DataLoader(train, batch_size=128, shuffle=True, num_workers=2, pin_memory=pin)
    test_loader = DataLoader(test, batch_size=128, shuffle=False, num_workers=2, pin_memory=pin)
    model = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, optimizer, loader, epoch, device)
        print(f"====> Epoch: {epoch} Average loss: {train_loss:.4f}")
        test_loss = test_epoch(model, test_loader, epoch, out, device)
        print(f"====> Test set loss: {test_loss:.4f}")
        with torch.no_grad():
            samples = model.decode(torch.randn(64, 32, device=device)).cpu()
            save_grid(samples, 8, out / f"sample_{epoch}.png")
    print(f"{args.epochs} epochs in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
