"""What the entry points run: training, evaluation and generation from Hydra configs, and the
run infrastructure (config checks, checkpoints and resume, DDP in sweeps, sweep summaries,
terminal reports).

Importing it registers the resolvers the configs use: ``${vaelab_root:}`` (``configs/paths``)
``${vaelab_tensorboard_dir:<run dir>}`` (``configs/logger``), and ``${vaelab_job_record:..}``
and ``${vaelab_job_log:..}`` (``configs/hydra``: what a sweep job run again writes), and
``${vaelab_options:<group>}`` (the help texts of eval.py and sample.py: a group's options)."""

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> str:
    """The repository root when vaelab is installed from a checkout (``pip install -e .``),
    else the current working directory. Used by ``configs/paths`` as ``${vaelab_root:}``."""
    candidate = Path(__file__).resolve().parents[3]
    if (candidate / "configs").is_dir():
        return str(candidate)
    return str(Path.cwd())


def group_options(group: str) -> str:
    """The options of the config group ``group`` (the files of ``configs/<group>/``), comma
    separated: what a help text lists, read from the folder (``${vaelab_options:data}``)."""
    folder = Path(project_root()) / "configs" / group
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))


def tensorboard_dir(*args):
    """``vaelab.runs.tensorboard.tensorboard_dir``, imported when a config resolves it."""
    from vaelab.runs.tensorboard import tensorboard_dir as resolve

    return resolve(*args)


def job_record(*args):
    """``vaelab.runs.resume.job_record``, imported when a config resolves it."""
    from vaelab.runs.resume import job_record as resolve

    return resolve(*args)


def job_log(*args):
    """``vaelab.runs.resume.job_log``, imported when a config resolves it."""
    from vaelab.runs.resume import job_log as resolve

    return resolve(*args)


if not OmegaConf.has_resolver("vaelab_options"):
    OmegaConf.register_new_resolver("vaelab_options", group_options)
if not OmegaConf.has_resolver("vaelab_root"):
    OmegaConf.register_new_resolver("vaelab_root", project_root)
if not OmegaConf.has_resolver("vaelab_tensorboard_dir"):
    OmegaConf.register_new_resolver("vaelab_tensorboard_dir", tensorboard_dir)
if not OmegaConf.has_resolver("vaelab_job_record"):
    OmegaConf.register_new_resolver("vaelab_job_record", job_record)
if not OmegaConf.has_resolver("vaelab_job_log"):
    OmegaConf.register_new_resolver("vaelab_job_log", job_log)
