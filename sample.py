"""Generate from a VAE checkpoint: ``python sample.py ckpt_path=PATH [num_samples=64]``.

Writes samples.png, interpolation.png and traversal.png into
``logs/sample/runs/<timestamp>/``. See configs/sample.yaml for the options."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import vaelab.runs  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.errors import VaelabError
from vaelab.runs.cli import print_error, run_or_exit
from vaelab.runs.preflight import check_command


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    from vaelab.runs.generate import generate  # the model stack: not for --help or a refusal

    run_or_exit(generate, cfg)


if __name__ == "__main__":
    try:  # a command Hydra would refuse in many lines, or run wrongly: one line, exit 2
        check_command(sys.argv, Path(__file__).resolve().parent / "configs", "sample")
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
    main()
