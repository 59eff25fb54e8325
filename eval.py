"""Evaluate a VAE checkpoint: ``python eval.py ckpt_path=PATH [hydra overrides]``.

Writes ``logs/eval/runs/<timestamp>/metrics.json``, figures and TensorBoard events, and prints
a table. See configs/eval.yaml for the options."""

import hydra
from omegaconf import DictConfig

import vaelab.runs  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.runs.cli import run_or_exit
from vaelab.runs.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    main()
