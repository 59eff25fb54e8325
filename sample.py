"""Generate from a VAE checkpoint: ``python sample.py ckpt_path=PATH [num_samples=64]``.

Writes samples.png, interpolation.png and traversal.png into
``logs/sample/runs/<timestamp>/``. See configs/sample.yaml for the options."""

import hydra
from omegaconf import DictConfig

import vaelab.runs  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.runs.cli import run_or_exit
from vaelab.runs.generate import generate


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    run_or_exit(generate, cfg)


if __name__ == "__main__":
    main()
