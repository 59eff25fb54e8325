"""What the entry points run: training, evaluation and generation from Hydra configs, and the
run infrastructure (config checks, checkpoints and resume, DDP in sweeps, sweep summaries,
terminal reports).

Importing it registers the ``${vaelab_root:}`` resolver that ``configs/paths`` uses."""

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> str:
    """The repository root when vaelab is installed from a checkout (``pip install -e .``),
    else the current working directory. Used by ``configs/paths`` as ``${vaelab_root:}``."""
    candidate = Path(__file__).resolve().parents[3]
    if (candidate / "configs").is_dir():
        return str(candidate)
    return str(Path.cwd())


if not OmegaConf.has_resolver("vaelab_root"):
    OmegaConf.register_new_resolver("vaelab_root", project_root)
