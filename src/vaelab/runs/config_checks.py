"""Config checks that run before any data is read or model built: one line per bad value,
naming the key, the value and what is allowed.

To check a new key, append a ``Rule`` to ``RULES``. A rule whose key is absent from the config
is skipped, so rules for keys that only some configs have (or that later features add) cost
nothing. Name rules read their allowed names from the module that implements them (e.g.
``vaelab.science.likelihoods.LIKELIHOODS``), so adding a name there is enough.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.errors import VaelabError

_ABSENT = object()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= low


def number_at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: is_number(v) and v >= low


def positive_number(value: Any) -> bool:
    return is_number(value) and value > 0


def int_list_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) > 0 and all(is_int(x) and x >= low for x in v)


def epochs(value: Any) -> bool:
    return is_int(value) and (value >= 1 or value == -1)


def duration(value: Any) -> bool:
    """Lightning's ``max_time`` as a config gives it: null or ``DD:HH:MM:SS``."""
    return value is None or (
        isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value) is not None
    )


def fraction(value: Any) -> bool:
    return is_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class OneOf:
    """A fixed set of names."""

    choices: tuple[str, ...]

    def names(self) -> tuple[str, ...]:
        return self.choices


@dataclass(frozen=True)
class NamesFrom:
    """The names listed by ``module.attribute``; a rule using it is skipped while that module
    or attribute does not exist (the feature that defines the names is not installed)."""

    module: str
    attribute: str

    def names(self) -> tuple[str, ...] | None:
        try:
            names = getattr(importlib.import_module(self.module), self.attribute, None)
        except ImportError:
            return None
        return None if names is None else tuple(names)


@dataclass(frozen=True)
class Rule:
    """``key`` (dotted) must satisfy ``check``; ``allowed`` says what is accepted."""

    key: str
    check: Callable[[Any], bool] | NamesFrom | OneOf
    allowed: str = ""

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is accepted, else the one-line message."""
        if isinstance(self.check, (NamesFrom, OneOf)):
            names = self.check.names()
            if names is None or value in names:
                return None
            allowed = "one of " + ", ".join(names)
        elif self.check(value):
            return None
        else:
            allowed = self.allowed
        return f"{self.key}={format_value(value)} must be {allowed}"


RULES: tuple[Rule, ...] = (
    Rule(
        "model.latent_dim",
        lambda v: int_at_least(1)(v) or int_list_at_least(1)(v),
        "an integer >= 1 (a list of them, one per stochastic layer, for a hierarchy)",
    ),
    Rule(
        "model.hidden_dims",
        lambda v: (
            int_list_at_least(1)(v)
            or (isinstance(v, list) and len(v) > 0 and all(int_list_at_least(1)(h) for h in v))
        ),
        "a non-empty list of integers >= 1, e.g. [256,256] (for a hierarchy one list per "
        "stochastic layer, e.g. [[200,200],[100,100]])",
    ),
    Rule("model.activation", NamesFrom("vaelab.science.networks", "ACTIVATIONS")),
    Rule("model.beta", number_at_least(0), "a finite number >= 0"),
    Rule("model.likelihood", NamesFrom("vaelab.science.likelihoods", "LIKELIHOODS")),
    Rule("model.optimizer.lr", positive_number, "a finite number > 0"),
    Rule("data.batch_size", int_at_least(1), "an integer >= 1"),
    Rule("data.eval_batch_size", int_at_least(1), "an integer >= 1"),
    Rule(
        "data.val_size",
        int_at_least(0),
        "an integer >= 0 (images held out of the training file; 0 validates on the test set)",
    ),
    Rule("trainer.max_epochs", epochs, "an integer >= 1, or -1 for no limit"),
    Rule("trainer.max_time", duration, "null or DD:HH:MM:SS (e.g. 00:00:30:00: 30 minutes)"),
    Rule(
        "trainer.gradient_clip_val",
        lambda v: v is None or number_at_least(0)(v),
        "null or a number >= 0",
    ),
    Rule("data.binarize", NamesFrom("vaelab.data.datamodule", "BINARIZE")),
    Rule("test_checkpoint", OneOf(("best", "last"))),
    # keys that only some versions of the model have: checked when the config has them
    Rule(
        "model.onednn_linear",
        lambda v: isinstance(v, bool) or v == "auto",
        "auto, true or false",
    ),
    Rule("model.architecture", NamesFrom("vaelab.science.networks", "ARCHITECTURES")),
    Rule("model.k", int_at_least(1), "an integer >= 1 (importance samples per image)"),
    Rule("model.kl_schedule", NamesFrom("vaelab.science.schedules", "KL_SCHEDULES")),
    Rule("model.kl_warmup_steps", int_at_least(0), "an integer >= 0 (optimizer steps)"),
    Rule(
        "model.kl_warmup_epochs",
        lambda v: v is None or number_at_least(0)(v),
        "null (kl_warmup_steps counts) or a number >= 0 (epochs)",
    ),
    Rule("model.kl_cycles", int_at_least(1), "an integer >= 1"),
    Rule("model.kl_cycle_ratio", fraction, "a number in (0, 1] (rising part of each cycle)"),
    Rule("model.free_bits", number_at_least(0), "a finite number >= 0 (nats per latent dimension)"),
    Rule("callbacks.figures.every_n_epochs", int_at_least(1), "an integer >= 1"),
    Rule(
        "callbacks.stop_on_nonfinite_loss.check_every_n_steps",
        lambda v: v is None or int_at_least(1)(v),
        "null (trainer.log_every_n_steps) or an integer >= 1",
    ),
)


def format_value(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True)
        if isinstance(value, (DictConfig, ListConfig))
        else value
    )


def value_problems(cfg: DictConfig, rules: tuple[Rule, ...] = RULES) -> list[str]:
    """One message per rule whose key is present and whose value is not accepted."""
    problems = []
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:
            continue
        problem = rule.problem(plain(value))
        if problem:
            problems.append(problem)
    return problems


def _target_nodes(node: Any, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted key prefix, node) of every plain-dict config node with a ``_target_``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield prefix, node
        for key, child in node.items():
            yield from _target_nodes(child, f"{prefix}{key}.")


def _parameters(obj: Any) -> list[str] | None:
    """The keyword arguments ``obj`` accepts; None when it takes any (``**kwargs``) or has no
    signature to check."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p in params if p != "self"]


def _net_parameters(cls: type) -> list[str] | None:
    """The arguments of a VAE variant class: its own and, when its ``__init__`` passes
    ``**kwargs`` on to ``super().__init__`` (``**vae_args``), its base classes'."""
    names: list[str] = []
    for owner in (c for c in cls.__mro__[:-1] if "__init__" in vars(c)):
        try:
            params = inspect.signature(owner.__init__).parameters
        except (TypeError, ValueError):
            return None
        keyword = [n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
        names += [n for n in params if n not in ("self", *names, *keyword)]
        if not keyword:
            return names
    return None


def _import_problem(key: str, target: Any, err: Exception) -> str:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return (
        f"{key}={format_value(target)}: cannot be imported ({reason}); "
        "fix the name or install the package that provides it"
    )


def argument_problems(cfg: DictConfig) -> list[str]:
    """Keys of ``_target_`` nodes that the target does not accept (``+model.foo=1``): caught
    here instead of as a TypeError deep inside instantiation or, for the optimizer, in fit.
    A target that passes its other keyword arguments to a network named by its ``net`` key
    (``vaelab.lit.module.VAELitModule``) accepts that network's arguments too."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    problems = []
    for prefix, node in _target_nodes(tree):
        target = node["_target_"]
        try:
            obj = get_object(target)
        except Exception as err:  # noqa: BLE001 - any import failure: the same advice
            problems.append(_import_problem(f"{prefix}_target_", target, err))
            continue
        params = _parameters(obj)
        owner = target
        if isinstance(node.get("net"), str) and isinstance(obj, type):
            from vaelab.lit.module import VAELitModule, module_arguments

            own = module_arguments(obj) if issubclass(obj, VAELitModule) else None
            if own is not None:  # its own arguments, then the network's
                try:
                    net_params = _net_parameters(get_object(node["net"]))
                except Exception as err:  # noqa: BLE001
                    problems.append(_import_problem(f"{prefix}net", node["net"], err))
                    continue
                params = None if net_params is None else ["net", *own, *net_params]
                owner = f"{target} with net={node['net']}"
        if params is None:
            continue
        for key in node:
            if not key.startswith("_") and key not in params:
                problems.append(
                    f"{prefix}{key}: {owner} has no argument {key!r}; remove it "
                    f"(its arguments: {', '.join(params)})"
                )
    return problems


def arguments_problems(
    cfg: DictConfig, kind: str, name: str, accepted: list[str], example: str
) -> list[str]:
    """``model.<kind>_args`` of the ``kind`` (objective, likelihood) called ``name``: a
    mapping whose keys are among the constructor's ``accepted`` arguments; one line each."""
    key = f"model.{kind}_args"
    given = plain(OmegaConf.select(cfg, key, default=None)) or {}
    if not isinstance(given, dict):
        return [
            f"{key}={format_value(given)} must be a mapping of the {kind}'s arguments, "
            f"e.g. {{{example}}}"
        ]
    return [
        f"{key}.{argument}: {kind} {name!r} has no argument {argument!r} (its arguments: "
        f"{', '.join(accepted) or 'none'})"
        for argument in given
        if argument not in accepted
    ]


def objective_problems(cfg: DictConfig) -> list[str]:
    """``model.objective``: a name registered in ``vaelab.science.objectives`` (or the dotted
    path of an objective class), and ``model.objective_args`` that its constructor takes."""
    name = OmegaConf.select(cfg, "model.objective", default=None)
    if name is None:
        return []
    from vaelab.science.objectives import OBJECTIVES, get_objective, objective_arguments

    if not isinstance(name, str):
        return [
            f"model.objective={format_value(plain(name))} must be one of "
            f"{', '.join(OBJECTIVES)} (or the dotted path of an Objective class)"
        ]
    try:
        cls = get_objective(name)
    except VaelabError as err:
        return [str(err)]
    return arguments_problems(cfg, "objective", name, objective_arguments(cls), "tc_weight: 4")


def likelihood_problems(cfg: DictConfig) -> list[str]:
    """``model.likelihood_args`` that the registered likelihood's constructor does not take
    (an unknown ``model.likelihood`` is the value rule's)."""
    from vaelab.science.likelihoods import LIKELIHOODS, likelihood_arguments

    name = OmegaConf.select(cfg, "model.likelihood", default=None)
    if name not in LIKELIHOODS:
        return []
    accepted = likelihood_arguments(LIKELIHOODS[name])
    return arguments_problems(cfg, "likelihood", name, accepted, "per_pixel: false")


def architecture_problems(cfg: DictConfig) -> list[str]:
    """What the conv architecture needs of the other model keys: two stride-2 convolutions
    (``hidden_dims=[c1, c2]``) on images whose height and width divide by 4."""
    model = cfg.get("model") or {}
    if model.get("architecture") != "conv":
        return []
    hidden, shape = plain(model.get("hidden_dims")), plain(model.get("input_shape", [1, 28, 28]))
    problems = []
    if not isinstance(hidden, list) or len(hidden) != 2:
        problems.append(
            f"model.hidden_dims={format_value(hidden)} must be two channel counts, e.g. [32,64], "
            "with model.architecture='conv'"
        )
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        problems.append(
            f"model.input_shape={format_value(shape)} must be [C,H,W] with H and W divisible "
            "by 4 for model.architecture='conv'"
        )
    return problems


def network_problems(cfg: DictConfig) -> list[str]:
    """What the network's own constructor refuses (a ``VaelabError``: ``model.hidden_dims``
    that do not fit ``model.latent_dim``, ...), found by building it on the meta device (no
    memory, no initialisation) before the run seeds, loads data or builds anything else.
    Any other failure is left to the build, which reports it as before."""
    from vaelab.lit.module import VAELitModule
    from vaelab.runs.checkpoints import net_shapes, own_arguments

    model = cfg.get("model")
    if not isinstance(model, DictConfig) or "_target_" not in model:
        return []
    try:
        cls = get_object(model._target_)
    except Exception:  # noqa: BLE001 - reported by argument_problems
        return []
    if not (isinstance(cls, type) and issubclass(cls, VAELitModule)):
        return []
    own = own_arguments(cls)
    args = {
        k: v
        for k, v in OmegaConf.to_container(model, resolve=True).items()
        if not k.startswith("_") and k not in own
    }
    if "onednn_linear" in args:
        args["onednn_linear"] = False  # the shapes do not depend on it; auto would time kernels
    try:
        net_shapes(args)
    except VaelabError as err:
        return [str(err)]
    except Exception:  # noqa: BLE001 - reported by the build itself
        return []
    return []


def accelerator_problems(cfg: DictConfig) -> list[str]:
    """A GPU asked for where torch sees none (Lightning would stop with a traceback)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return []
    return [
        f"trainer.accelerator={format_value(accelerator)}: this torch ({torch.__version__}) "
        "sees no CUDA GPU; use trainer=cpu, or a machine with a GPU and a CUDA build of torch"
    ]


def time_budget_problems(cfg: DictConfig) -> list[str]:
    """``callbacks.time_budget`` (``vaelab.lit.budget.TimeBudget``) without the budget it sizes
    the run to, or with a learning-rate schedule whose horizon cannot follow it."""
    from vaelab.lit.budget import FOLLOWS, fixed_horizon, no_budget

    if OmegaConf.select(cfg, "callbacks.time_budget", default=None) is None:
        return []
    problems = []
    if OmegaConf.select(cfg, "trainer.max_time", default=None) is None:
        problems.append(no_budget())
    target = OmegaConf.select(cfg, "model.scheduler._target_", default=None)
    if target is not None and target not in FOLLOWS:
        problems.append(f"model.scheduler={format_value(target)}: " + fixed_horizon(target))
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise one VaelabError listing every bad value (one line each), or return."""
    problems = value_problems(cfg) + architecture_problems(cfg) + argument_problems(cfg)
    problems += objective_problems(cfg) + likelihood_problems(cfg)
    if not problems:  # (a value refused above may not even build)
        problems += network_problems(cfg)
    problems += accelerator_problems(cfg) + time_budget_problems(cfg)
    if cfg.get("resume") is not None and cfg.get("ckpt_path") is not None:
        problems.append(
            f"resume={format_value(cfg.resume)} and ckpt_path={format_value(cfg.ckpt_path)}: "
            "give one of them (resume=<run_dir> picks that run's newest checkpoint)"
        )
    if problems:
        raise VaelabError("\n".join(problems))
