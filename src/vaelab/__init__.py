"""vaelab: a PyTorch Lightning + Hydra research template for variational autoencoders."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"


def project_root() -> str:
    """The repository root when vaelab is installed from a checkout (``pip install -e .``),
    else the current working directory. Used by ``configs/paths`` as ``${vaelab_root:}``."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "configs").is_dir():
        return str(candidate)
    return str(Path.cwd())


if not OmegaConf.has_resolver("vaelab_root"):
    OmegaConf.register_new_resolver("vaelab_root", project_root)
