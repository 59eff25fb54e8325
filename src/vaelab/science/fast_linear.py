"""``nn.Linear`` whose fp32 matrix products on the CPU run through oneDNN.

Why hand-written: torch sends fp32 ``Linear`` on the CPU to MKL, which runs its AVX2 code on
AMD processors even when they have AVX-512; oneDNN (bundled with every x86 torch build)
uses AVX-512 wherever the CPU has it. On a 2-core AMD EPYC (Zen 5),
``python scripts/benchmark.py --epochs 2 --rounds 2`` trained the default model about 20 %
faster with it than with ``model.onednn_linear=false`` (docs/speed.md).
torch exposes oneDNN's fp32 linear only as ``torch.ops.mkldnn._linear_pointwise`` (what
Inductor calls), with no autograd formula, so the backward pass is written here: three
matrix products, all fp32.
No library offers this for training. Everything else (GPU, other dtypes, autocast,
``torch.compile``, builds without oneDNN) takes ``nn.Linear``'s own path, and the parameters
and state dict are ``nn.Linear``'s, so checkpoints are the same either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _find_onednn_linear():
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_ONEDNN_LINEAR = _find_onednn_linear()


def _matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
    """a [M, K] @ b.T [K, N] (+ bias [N]) by oneDNN, fp32: [M, N]. Strided inputs are fine."""
    return _ONEDNN_LINEAR(a, b, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with x [B, in], W [out, in], b [out] or None."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _matmul_t(grad, weight.t()) if need_x else None  # [B, out] @ [out, in]
        grad_w = _matmul_t(grad.t(), x.t()) if need_w else None  # [out, B] @ [B, in]
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """A drop-in ``nn.Linear``: same parameters and results (to fp32 rounding); 2-d fp32 CPU
    inputs are multiplied by oneDNN, everything else by ``nn.Linear.forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _ONEDNN_LINEAR is not None
            and x.dim() == 2
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


# --- choosing the path for the machine: a short measured probe, cached per machine --------
#
# oneDNN wins where torch's MKL runs narrower code than the CPU has (AMD processors with
# AVX-512); on Intel processors MKL is usually the faster one. Which one wins also depends on
# the layer sizes, the batch size and the number of threads, so ``choose_onednn_linear`` times
# both on the run's own layer sizes and batch size and keeps the verdict in a small JSON file.

CACHE_FILE = "linear_path.json"
# oneDNN is chosen only when it takes less than this share of nn.Linear's time: within the
# margin the two are even and torch's own path is kept
ONEDNN_MARGIN = 0.98


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's fp32 linear (x86 builds do)."""
    return _ONEDNN_LINEAR is not None


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir():
    """Where per-machine verdicts are kept: ``$VAELAB_CACHE_DIR``, else the user cache dir
    (``platformdirs``; ``~/.cache/vaelab`` on Linux)."""
    import os
    from pathlib import Path

    if os.environ.get("VAELAB_CACHE_DIR"):
        return Path(os.environ["VAELAB_CACHE_DIR"])
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaelab"
    return Path(user_cache_dir("vaelab", appauthor=False))


def probe_key(shapes, batch_size: int) -> str:
    """What a verdict depends on: the CPU, torch, the thread count, the layers and the batch."""
    layers = ",".join(f"{i}x{o}" for i, o in shapes)
    return (
        f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
        f"batch {batch_size} | layers {layers}"
    )


def probe_onednn_linear(
    shapes, batch_size: int, rounds: int = 7, budget_seconds: float = 0.3, seed: int = 0
) -> dict:
    """Time a forward and backward pass of linear layers of ``shapes`` ((in, out) pairs) at
    ``batch_size`` rows, through nn.Linear's path (``F.linear``) and through oneDNN, the two
    interleaved (order flipped every round) so that a machine getting slower or faster
    between them does not decide. Returns ``{"onednn": bool, "ratio": median over the rounds
    of oneDNN's time / nn.Linear's, "seconds": the probe's own time}``. Draws its tensors from
    its own generator: torch's global random state is left as it was."""
    import statistics
    import time

    import torch.nn.functional as F

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(shapes):
        weight = (torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5).requires_grad_()
        bias = torch.zeros(fan_out).requires_grad_()
        x = torch.rand(batch_size, fan_in, generator=generator).requires_grad_(i > 0)
        grad = torch.randn(batch_size, fan_out, generator=generator)
        layers.append((x, weight, bias, grad))

    def step(linear) -> None:
        for x, weight, bias, grad in layers:
            weight.grad = bias.grad = x.grad = None
            linear(x, weight, bias).backward(grad)

    paths = {"plain": F.linear, "onednn": _OneDNNLinearFunction.apply}

    def timed(name: str, steps: int) -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            step(paths[name])
        return time.perf_counter() - begin

    per_step = min(timed("plain", 1), timed("onednn", 1), timed("plain", 1))  # warm-up too
    steps = max(1, min(20, int(budget_seconds / (2 * rounds * max(per_step, 1e-6)))))
    ratios = []
    for r in range(rounds):
        order = ("plain", "onednn") if r % 2 == 0 else ("onednn", "plain")
        times = {name: timed(name, steps) for name in order}
        ratios.append(times["onednn"] / times["plain"])
    ratio = statistics.median(ratios)
    return {
        "onednn": ratio < ONEDNN_MARGIN,
        "ratio": round(ratio, 4),
        "steps": steps,
        "rounds": rounds,
        "seconds": round(time.perf_counter() - start, 3),
    }


def choose_onednn_linear(shapes, batch_size: int, use_cache: bool = True) -> tuple[bool, str]:
    """Whether oneDNN's linear is the faster fp32 path on this CPU for layers of ``shapes``
    ((in, out) pairs) at ``batch_size``, and how that was decided (one line). The verdict is
    cached per machine (``probe_key``) in ``cache_dir() / CACHE_FILE``; without oneDNN: False.
    A cache that cannot be read or written only costs a new probe."""
    import json
    import os

    if not onednn_available():
        return False, "nn.Linear (this torch has no oneDNN linear)"
    shapes = [(int(i), int(o)) for i, o in shapes]
    key = probe_key(shapes, batch_size)
    path = cache_dir() / CACHE_FILE
    cached: dict = {}
    if use_cache:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        verdict = cached.get(key) if isinstance(cached, dict) else None
        if isinstance(verdict, dict) and isinstance(verdict.get("onednn"), bool):
            return verdict["onednn"], _describe(verdict, f"cached in {path}")
    verdict = probe_onednn_linear(shapes, batch_size)
    where = "not cached"
    if use_cache:
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = verdict
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(cached, indent=1, sort_keys=True) + "\n")
            os.replace(temporary, path)
            where = f"cached in {path}"
        except OSError as err:
            where = f"not cached: {err.strerror or err}"
    return verdict["onednn"], _describe(verdict, f"probed in {verdict['seconds']} s, {where}")


def _describe(verdict: dict, how: str) -> str:
    name = "oneDNN" if verdict["onednn"] else "nn.Linear (MKL)"
    return f"{name}: oneDNN took {verdict['ratio']:.2f}x nn.Linear's time ({how})"


def linear_shapes(net: nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of every ``nn.Linear`` in ``net``, in module order."""
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
