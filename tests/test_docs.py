"""The README and docs/ cannot rot: every command they show still composes, every link and
image they point to exists, every repository file they name in code is there, and they say
nothing that only made sense on one machine.

Commands: every ``python train.py|eval.py|sample.py ...`` (also after ``VAR=value`` prefixes,
``.venv/bin/python``, and ``make train ARGS="..."``) in a code block or an inline code span.
Its overrides are composed with Hydra's compose API on configs/ (``train``, ``eval`` or
``sample``); a multirun (``-m``) is composed with the first value of each swept key; Hydra's
flags (``--help``, ``--cfg job``, ``-p hydra.launcher``, ...) are set aside and ``<name>``
placeholders stand for a value. train.py commands must also pass the config checks that
train.py makes before it reads data (``vaelab.runs.config_checks``, the GPU check aside). A
command in a code block followed by an ``error:`` line is an example of a refused command:
it must fail. ``python scripts/<file>.py`` must name a file that exists, ``make <target>`` a
target of the Makefile.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from vaelab.runs.config_checks import architecture_problems, argument_problems, value_problems

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
SPAN = re.compile(r"``?([^`\n]+?)``?")
PYTHON = re.compile(r"(?:^|[\s$(])(?:\S*/)?python3?\s+(\S+\.py)((?:\s.*)?)$")
MAKE = re.compile(r"(?:^|[\s$(])make\s+([\w-]+)((?:\s.*)?)$")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
COMMENT = re.compile(r"\s+#\s.*$")
# a config file the reader is told to create (configs/hparams_search/my_search.yaml)
READERS_OWN = re.compile(r"=my_\w+")
SHELL_END = {"|", "||", "&&", ";", ">", "2>&1", "&"}
# Hydra's flags: those followed by a value, and the others
FLAG_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir"}
FLAGS = {"--help", "-h", "--hydra-help", "--resolve", "--info", "-i", "--run", "-r"}
MULTIRUN = {"-m", "--multirun"}
SCRIPTS = {"train.py": "train", "eval.py": "eval", "sample.py": "sample"}


@dataclass
class Command:
    page: str
    line: int
    text: str
    expect_error: bool = False

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def split_code(text: str) -> tuple[list[tuple[int, str]], str]:
    """The fenced code blocks as (first line, body), and the text without them."""
    blocks = [(line_of(text, m.start(1)), m.group(1)) for m in FENCE.finditer(text)]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    return blocks, prose


def block_lines(start: int, body: str) -> list[tuple[int, str]]:
    """A code block's lines, continuation lines (``\\``) joined, with their line numbers."""
    out: list[tuple[int, str]] = []
    pending = None
    for i, line in enumerate(body.splitlines()):
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (start + i, line)
        if not pending[1].endswith("\\"):
            out.append(pending)
            pending = None
        else:
            pending = (pending[0], pending[1][:-1])
    if pending:
        out.append(pending)
    return out


def find_command(text: str) -> str | None:
    """The command in one code line or span, from ``python``/``make`` on, without a
    trailing ``# comment``."""
    text = COMMENT.sub("", text)
    match = PYTHON.search(text) or MAKE.search(text)
    return text[match.start() :].strip().lstrip("$(").strip() if match else None


def commands_in(path: Path) -> list[Command]:
    text = path.read_text()
    page = str(path.relative_to(ROOT))
    blocks, prose = split_code(text)
    found = []
    for start, body in blocks:
        lines = block_lines(start, body)
        for i, (number, line) in enumerate(lines):
            command = find_command(line)
            if command is None:
                continue
            output = []
            for _, after in lines[i + 1 :]:
                if find_command(after):
                    break
                output.append(after)
            error = any(out.startswith("error:") for out in output)
            found.append(Command(page, number, command, error))
    for match in SPAN.finditer(prose):
        command = find_command(match.group(1))
        if command:
            found.append(Command(page, line_of(prose, match.start()), command))
    return found


ALL_COMMANDS = [c for page in PAGES for c in commands_in(page)]


def tokens(rest: str) -> list[str]:
    """The shell words after the script or target, up to a pipe or redirection."""
    words = shlex.split(PLACEHOLDER.sub("X", rest), comments=True)
    for i, word in enumerate(words):
        if word in SHELL_END:
            return words[:i]
    return words


def first_values(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each swept key at its first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for line, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{prefix}{override.get_key_element()}={first}")
        else:
            out.append(line)
    return out


def hydra_overrides(words: list[str]) -> tuple[list[str], bool]:
    """(overrides, multirun?) of a script's command-line words."""
    overrides, multirun, skip = [], False, False
    for word in words:
        if skip:
            skip = False
        elif word in MULTIRUN:
            multirun = True
        elif word in FLAG_WITH_VALUE:
            skip = True
        elif word in FLAGS or word == "...":
            continue
        elif word.startswith("-"):
            raise AssertionError(f"unknown flag {word}")
        else:
            overrides.append(word)
    return (first_values(overrides) if multirun else overrides), multirun


def compose_problems(config_name: str, overrides: list[str]) -> list[str]:
    """Why the command would be refused before training starts; empty when it composes."""
    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception as err:  # noqa: BLE001 - any composition error is the finding
        return [f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"]
    if config_name != "train":
        return []
    return value_problems(cfg) + architecture_problems(cfg) + argument_problems(cfg)


def problems_of(command: Command) -> list[str]:
    """What is wrong with one documented command (empty: it works as written)."""
    if match := PYTHON.search(command.text):
        script, rest = match.group(1), match.group(2)
        if script not in SCRIPTS:
            return [] if (ROOT / script).is_file() else [f"{script} does not exist"]
        config_name, words = SCRIPTS[script], tokens(rest)
    else:
        match = MAKE.search(command.text)
        target, words = match.group(1), tokens(match.group(2))
        if not re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M):
            return [f"make {target}: no such target in the Makefile"]
        if target != "train":
            return []
        args = [w.split("=", 1)[1] for w in words if w.startswith("ARGS=")]
        config_name, words = "train", shlex.split(args[0]) if args else []
    if any(READERS_OWN.search(w) for w in words):
        return []
    try:
        overrides, _ = hydra_overrides(words)
    except Exception as err:  # noqa: BLE001
        return [str(err).splitlines()[0]]
    return compose_problems(config_name, overrides)


@pytest.fixture(scope="module")
def hydra_configs():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield


def test_the_docs_show_commands():
    """The extraction finds the README's main commands (a guard against a parser that finds
    nothing and so checks nothing)."""
    texts = {c.text for c in ALL_COMMANDS}
    assert (
        "make test" in texts
        and "make train" in texts
        and any(t.startswith("python eval.py") for t in texts)
    )
    assert any(t.startswith("python train.py -m ") for t in texts)
    assert any(c.expect_error for c in ALL_COMMANDS)
    assert len(ALL_COMMANDS) > 50


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_documented_command_works_as_written(hydra_configs, command):
    problems = problems_of(command)
    if command.expect_error:
        assert problems, f"{command}\nis shown failing with 'error:' but is accepted"
    else:
        assert not problems, f"{command}\n" + "\n".join(problems)


def test_a_broken_command_is_caught(hydra_configs):
    """The checks above fail on a misspelt key, a bad value, an unknown option or script."""
    for text in (
        "python train.py model.laten_dim=2",
        "python train.py model.latent_dim=0",
        "python train.py model=no_such_model",
        "python train.py -m model.latent_dim=2,8 trainer.max_epoch=1",
        'make train ARGS="model.latent_dim=8 trainer.max_epoch=5"',
        "python eval.py ckpt_path=x nll.kk=1",
        "python sample.py model.latent_dim=2",
        "python scripts/no_such_script.py",
        "make no_such_target",
    ):
        assert problems_of(Command("test", 0, text)), text


# --- links, images and file names -------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img [^>]*src=\"([^\"]+)\"")
REPO_PATH = re.compile(r"^(?:configs|src|scripts|tests|docs)/[\w./-]*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_code(path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", prose, re.MULTILINE)}


def links_in(path: Path) -> list[tuple[int, str]]:
    _, prose = split_code(path.read_text())
    prose = SPAN.sub(lambda m: " " * len(m.group(0)), prose)
    return [(line_of(prose, m.start()), m.group(1) or m.group(2)) for m in LINK.finditer(prose)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_exists(page):
    missing = []
    for number, target in links_in(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            missing.append(f"{number}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            missing.append(f"{number}: {target} (no such heading)")
    assert not missing, f"{page.name}:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_file_named_in_code_exists(page):
    text = page.read_text()
    named = {m.group(1) for m in SPAN.finditer(text) if REPO_PATH.match(m.group(1))}
    missing = sorted(p for p in named if "my_" not in p and not (ROOT / p).exists())
    assert not missing, f"{page.name} names files that do not exist: {missing}"


def test_the_docs_say_nothing_that_only_made_sense_on_one_machine():
    pattern = re.compile(
        r"/tmp/|/work/|/home/|not reached|whoever|for now|lent to this|this session|TODO"
    )
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


# --- docs/configuration.md covers configs/ ----------------------------------------------

CONFIGURATION = ROOT / "docs" / "configuration.md"


def section(heading_code: str) -> str:
    """The text of the section of docs/configuration.md whose heading names
    `heading_code`, up to the next heading of the same or a higher level."""
    text = CONFIGURATION.read_text()
    match = re.search(rf"^(#+) [^\n]*`{re.escape(heading_code)}`[^\n]*$", text, re.MULTILINE)
    assert match, f"docs/configuration.md has no section headed `{heading_code}`"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end() :], re.MULTILINE)
    return text[match.end() : match.end() + end.start() if end else len(text)]


def keys_of(path: Path, depth: int) -> list[str]:
    """The keys of a config file down to ``depth`` levels (dotted), ``defaults`` aside."""
    import yaml

    def walk(node, prefix: str, level: int):
        for key, value in node.items():
            if key == "defaults":
                continue
            yield prefix + str(key)
            if isinstance(value, dict) and level < depth:
                yield from walk(value, f"{prefix}{key}.", level + 1)

    return list(walk(yaml.safe_load(path.read_text()) or {}, "", 1))


def mentioned(name: str, text: str) -> bool:
    """``name`` appears as a whole word in one of the code spans of ``text``."""
    code = " ".join(m.group(1) for m in SPAN.finditer(text))
    return re.search(rf"(?<![\w/]){re.escape(name)}(?![\w/])", code) is not None


GROUP_DIRS = sorted(
    str(d.relative_to(CONFIG_DIR))
    for d in Path(CONFIG_DIR).rglob("*")
    if d.is_dir() and any(d.glob("*.yaml"))
)


# groups whose options are extensions (a variant, an objective, a data module): a file that
# documents itself needs no edit of docs/configuration.md
SELF_DOCUMENTING = ("model", "objective", "data", "likelihood")


def commented_keys(path: Path) -> tuple[bool, set[str]]:
    """(whether the file opens with a comment, the top-level keys with a comment line right
    above them): a variant's YAML documents itself this way."""
    lines = path.read_text().splitlines()
    opens = bool(lines) and lines[0].startswith("#")
    keys = {
        m.group(1)
        for above, line in zip(lines, lines[1:], strict=False)
        if above.lstrip().startswith("#") and (m := re.match(r"^(\w+):", line))
    } - {"defaults"}
    return opens, keys


@pytest.mark.parametrize("group", GROUP_DIRS)
def test_configuration_page_lists_every_option_and_key_of_a_group(group):
    """Every option and key of a group is in docs/configuration.md; a model variant's or an
    objective's file may document itself instead (a header comment and a comment above each
    key), so that adding one needs no edit of the docs."""
    text = section(group)
    missing = []
    for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        opens, commented = commented_keys(path) if group in SELF_DOCUMENTING else (False, set())
        if not mentioned(path.stem, text) and not opens:
            missing.append(f"option {path.stem}")
        # a file in the _global_ package sets keys of other groups: name them to depth 2
        depth = 2 if "@package _global_" in path.read_text() else 1
        missing += [f"{path.stem}: {key}" for key in keys_of(path, depth)
                    if not mentioned(key, text) and key not in commented]  # fmt: skip
    assert not missing, f"section `{group}` of docs/configuration.md lacks: {missing}"


def test_a_variant_yaml_with_comments_needs_no_docs_edit(tmp_path):
    documented = tmp_path / "flowy.yaml"
    documented.write_text("# A flow.\ndefaults:\n  - vae\n# its steps\nsteps: 2\n")
    assert commented_keys(documented) == (True, {"steps"})
    bare = tmp_path / "bare.yaml"
    bare.write_text("defaults:\n  - vae\nsteps: 2\n")
    assert commented_keys(bare) == (False, set())


@pytest.mark.parametrize("name", ["train", "eval", "sample"])
def test_configuration_page_lists_every_key_of_a_primary_config(name):
    text = section(f"{name}.yaml")
    keys = keys_of(Path(CONFIG_DIR) / f"{name}.yaml", depth=2)
    missing = [key for key in keys if key != "hydra" and not mentioned(key, text)]
    assert not missing, f"section `{name}.yaml` of docs/configuration.md lacks: {missing}"
