"""Train a VAE: ``python train.py [hydra overrides]``. See README for recipes."""

import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import vaelab.runs  # noqa: F401  (registers the ${vaelab_root:} resolver used by configs/paths)
from vaelab.errors import DistributedRunError, TrainingInterrupted, VaelabError
from vaelab.runs.cli import print_error
from vaelab.runs.preflight import check_command
from vaelab.runs.resume import discard_refused_run, resume_argv, resume_command
from vaelab.runs.sweep import failed_jobs, record_failed_job

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best val/loss, so Hydra sweepers can minimise it."""
    from vaelab.runs.train import train  # the training stack: not for --help or a refusal

    try:
        return train(cfg)["val/loss"]
    except TrainingInterrupted as stop:
        print(f"{stop}\nresume with: {resume_command(stop.run_dir)}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            # an extra DDP rank: the traceback to its log, whose last line rank 0 reports
            log.exception("DDP rank %s failed", os.environ["LOCAL_RANK"])
            raise SystemExit(1) from None
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # keep the sweep going: the job's error goes to its error.txt and the summary
            record_failed_job(Path(cfg.paths.output_dir), err)
            log.error("Job failed: %s", str(err).splitlines()[0] if str(err) else repr(err))
            return math.nan
        if isinstance(err, VaelabError):
            print_error(err)
            discard_refused_run(Path(cfg.paths.output_dir), HydraConfig.get().output_subdir)
            raise SystemExit(2) from None
        if isinstance(err, DistributedRunError):  # the run dir and its logs are kept
            print_error(err)
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    try:
        sys.argv = resume_argv(sys.argv)
        check_command(sys.argv, Path(__file__).resolve().parent / "configs")
    except VaelabError as err:
        print_error(err)
        raise SystemExit(2) from None
    main()
    if failed_jobs():
        print(f"error: {failed_jobs()}", file=sys.stderr)
        raise SystemExit(1)
