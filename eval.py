"""Evaluate a VAE checkpoint: ``python eval.py ckpt_path=PATH [hydra overrides]``.

Writes ``logs/eval/runs/<timestamp>/metrics.json``, figures and TensorBoard events, and prints
a table. See configs/eval.yaml for the options."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import vaelab.runs  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.errors import VaelabError
from vaelab.runs.cli import print_error, run_or_exit
from vaelab.runs.preflight import check_command


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from vaelab.runs.evaluate import evaluate  # the model stack: not for --help or a refusal

    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    try:  # a command Hydra would refuse in many lines, or run wrongly: one line, exit 2
        check_command(sys.argv, Path(__file__).resolve().parent / "configs", "eval")
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
    main()
