"""``python train.py --help`` (and eval.py, sample.py) opens with what the program does, its
config groups with their options and where the docs are, before the full config."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

CONFIGS = ROOT / "configs"
OPENING = {
    "train": "train.py trains a variational autoencoder on MNIST",
    "eval": "eval.py evaluates a checkpoint of train.py on the test set",
    "sample": "sample.py generates images from a checkpoint of train.py",
}


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """The --help output of the three scripts, run side by side."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / f"{name}.py"), "--help"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in OPENING
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        out[name] = stdout
    return out


def options(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")))


def groups_of(name: str) -> list[str]:
    """The config groups in the defaults list of configs/<name>.yaml (Hydra's own aside)."""
    defaults = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["defaults"]
    return [next(iter(d)) for d in defaults if isinstance(d, dict) and next(iter(d)) != "hydra"]


@pytest.mark.parametrize("name", list(OPENING))
def test_help_opens_with_what_the_program_does(helps, name):
    text = helps[name]
    assert text.startswith(OPENING[name])
    paragraph = text.split("\n\n")[0]
    assert len(paragraph.splitlines()) >= 3 and "logs/" in paragraph


@pytest.mark.parametrize("name", list(OPENING))
def test_help_lists_every_group_with_its_options_before_the_config(helps, name):
    text = helps[name]
    config_at = text.index("== The config")
    for group in groups_of(name):
        line = re.search(rf"^{group}: {re.escape(options(group))}\b", text, re.MULTILINE)
        assert line and line.start() < config_at, f"{name}.py --help lacks '{group}: ...'"


@pytest.mark.parametrize("name", list(OPENING))
def test_help_says_where_the_docs_are(helps, name):
    pages = re.findall(r"docs/[\w-]+\.md", helps[name])
    assert pages and all((ROOT / page).is_file() for page in pages), pages
    assert helps[name].index("docs/") < helps[name].index("== The config")


IMPORTED = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
print("imported:", sorted(m for m in ("torch", "lightning", "matplotlib") if m in sys.modules))
"""


@pytest.mark.parametrize("name", list(OPENING))
def test_help_imports_neither_torch_nor_lightning(name):
    """--help composes the config and prints it: the training stack is not imported (about
    a second instead of several; docs/speed.md)."""
    code = IMPORTED.format(script=str(ROOT / f"{name}.py"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "imported: []"
