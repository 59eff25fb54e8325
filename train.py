"""Train a VAE: ``python train.py [hydra overrides]``. See README for recipes."""

import sys

import hydra
from omegaconf import DictConfig

import vaelab  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.errors import VaelabError
from vaelab.train import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best val/loss, so Hydra sweepers can minimise it."""
    try:
        return train(cfg)["val/loss"]
    except VaelabError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
