"""A small CNN digit classifier that scores generated samples: the network, the images it
takes, the fingerprint that names the data it was trained on, and its predictions. It is
trained (by a Lightning Trainer) and cached in ``vaelab.lit.classifier``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class DigitClassifier(nn.Module):
    """Two conv blocks and two linear layers: [B, 1, 28, 28] in [0, 1] -> logits [B, classes].

    ``features(x)`` gives the penultimate activations [B, num_features] (after the ReLU),
    the space in which the Fréchet distance between real and generated images is measured.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: tuple[int, int] = (16, 32),
        num_features: int = 128,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.num_features = num_features
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = c2 * (image_size // 4) ** 2
        self.fc = nn.Sequential(nn.Linear(flat, num_features), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


@dataclass
class Images:
    """Images [N, 1, H, W] float in [0, 1] (or uint8 [N, H, W], converted) and labels [N]."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dtype == torch.uint8:
            self.x = self.x.unsqueeze(1).float().div_(255.0)


def fingerprint(*tensors: Tensor) -> str:
    """A short hash of the tensors' bytes: identifies the data a classifier was trained on."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def accuracy(model: nn.Module, data: Images, batch_size: int = 1000) -> float:
    """Fraction of ``data`` classified correctly."""
    model.eval()
    correct = 0
    for i in range(0, len(data.y), batch_size):
        pred = model(data.x[i : i + batch_size]).argmax(1)
        correct += int((pred == data.y[i : i + batch_size]).sum())
    return correct / len(data.y)


@torch.no_grad()
def classify(model: DigitClassifier, x: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Class probabilities [N, classes] and penultimate features [N, num_features] of
    images x [N, 1, 28, 28] in [0, 1]."""
    model.eval()
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i : i + batch_size])
        probs.append(model.head(f).softmax(1))
        feats.append(f)
    return torch.cat(probs), torch.cat(feats)
