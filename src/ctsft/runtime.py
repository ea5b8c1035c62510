"""Where and in which precision a step runs: one `Runtime` from the `runtime` config group.

Every step that touches a model (finetune, transfer, evaluate, mean_baseline, score_heads,
faithfulness) builds its `Runtime` here, so device choice, autocast, attention implementation and
GPU determinism are decided in one place. On a machine without CUDA the defaults resolve to
exactly what the CPU code did before (cpu, fp32, eager attention), so CPU results do not move.

- `device`: `auto` (CUDA when available, else CPU) | `cpu` | `cuda` | `cuda:N`. `auto` and `cuda`
  take a free GPU from `ctsft.gpu_slots`, so concurrent local jobs never share one. `auto`
  without CUDA in a job the scheduler gave a GPU stops (`check_allocated_gpu`): a GPU that was
  given is used, or refused in one line, never held while the job runs on the CPU.
- `precision`: `auto` (bf16 on CUDA, fp32 on CPU) | `fp32` | `bf16` | `fp16`: the autocast dtype
  of forward passes in training and evaluation. Weights, span deltas and optimizer state stay
  fp32 (master weights); fp16 adds a gradient scaler.
- `attention`: `auto` (SDPA on CUDA, eager on CPU, where eager is what the CPU results were made
  with) | `eager` | `sdpa`. The CD-T engine computes attention itself, so it never needs eager.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ctsft.errors import CtsftError
from ctsft.gpu_slots import claim_gpu

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
ATTENTIONS = ("eager", "sdpa")


@dataclass(frozen=True)
class Runtime:
    """A resolved device, autocast precision and attention implementation."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    attention: str = "eager"

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision forward passes (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)


CPU = Runtime()


#: what `CUDA_VISIBLE_DEVICES` holds when a scheduler gave no GPU
_NO_GPU = ("", "-1", "NoDevFiles")


def gpu_allocation(environ: Mapping[str, str] | None = None) -> str | None:
    """`NAME=value` of the variable by which the scheduler gave this job a GPU, else None.

    SLURM sets `SLURM_JOB_GPUS` (GPU indices) or `SLURM_GPUS_ON_NODE` (a count) for a job that
    was given GPUs, and `CUDA_VISIBLE_DEVICES` inside it. Outside a scheduler job (no
    `SLURM_JOB_ID`), `CUDA_VISIBLE_DEVICES` alone proves nothing (shells, CI images and
    containers export it on machines without a GPU): it only gets a warning, see
    `check_allocated_gpu`.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_GPUS", "").strip():
        return f"SLURM_JOB_GPUS={env['SLURM_JOB_GPUS'].strip()}"
    if env.get("SLURM_GPUS_ON_NODE", "").strip() not in ("", "0"):
        return f"SLURM_GPUS_ON_NODE={env['SLURM_GPUS_ON_NODE'].strip()}"
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if env.get("SLURM_JOB_ID") and visible not in _NO_GPU:
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def no_cuda_reason() -> str:
    """Why `torch.cuda.is_available()` is False, in words."""
    if torch.version.cuda is None:
        return f"the installed torch ({torch.__version__}) is a CPU build"
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU "
        "(NVIDIA driver or device missing)"
    )


def check_allocated_gpu(environ: Mapping[str, str] | None = None) -> None:
    """`runtime.device=auto` found no CUDA: stop when the scheduler gave this job a GPU (a GPU
    job must not run on the CPU for days while it holds one); warn when only
    `CUDA_VISIBLE_DEVICES` names one outside a scheduler job."""
    given = gpu_allocation(environ)
    if given is not None:
        raise CtsftError(
            f"{given}: this job was given a GPU, but {no_cuda_reason()}: install a CUDA build "
            "of torch (pytorch.org), or run with the slurm-cpu profile (no GPU jobs), or pass "
            "runtime.device=cpu to run on the CPU anyway"
        )
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible not in _NO_GPU:
        log.warning(
            "CUDA_VISIBLE_DEVICES=%s names a GPU, but %s: running on the CPU "
            "(runtime.device=cpu silences this)",
            visible,
            no_cuda_reason(),
        )


def resolve_device(spec: str) -> torch.device:
    """`auto | cpu | cuda | cuda:N` as a torch device; `auto`/`cuda` take a free GPU slot."""
    spec = str(spec).strip().lower()
    if spec not in ("auto", "cpu", "cuda") and not (
        spec.startswith("cuda:") and spec[5:].isdigit()
    ):
        raise CtsftError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto" and not torch.cuda.is_available():
        check_allocated_gpu()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CtsftError(
            f"runtime.device={spec} but CUDA is not available here: use runtime.device=auto or cpu"
        )
    count = torch.cuda.device_count()
    if spec in ("auto", "cuda"):
        index = claim_gpu(count)
    else:
        index = int(spec[5:])
        if index >= count:
            raise CtsftError(
                f"runtime.device={spec} but only {count} GPU(s) are visible: pick cuda:0..{count - 1}"
            )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _option(key: str, spec: str, allowed: tuple[str, ...], auto: str) -> str:
    """`runtime.<key>`: `auto` resolved to `auto`, else one of `allowed`."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return auto
    if spec not in allowed:
        raise CtsftError(f"runtime.{key} must be auto, {', '.join(allowed)}; got {spec!r}")
    return spec


def resolve_precision(spec: str, device: torch.device) -> str:
    cuda = device.type == "cuda"
    chosen = _option("precision", spec, tuple(PRECISIONS), "bf16" if cuda else "fp32")
    explicit_bf16 = str(spec).strip().lower() == "bf16"
    if explicit_bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise CtsftError("this GPU has no bf16: set runtime.precision=fp16 or fp32")
    return chosen


def resolve_attention(spec: str, device: torch.device) -> str:
    return _option("attention", spec, ATTENTIONS, "sdpa" if device.type == "cuda" else "eager")


_RESOLVED: dict[tuple[str, str, str], Runtime] = {}


def runtime_from_cfg(cfg: Any) -> Runtime:
    """The step's `Runtime` (resolved once per process: a GPU slot is claimed only once)."""
    section = cfg.get("runtime") if hasattr(cfg, "get") else None
    section = section or {}
    key = (
        str(section.get("device", "auto")),
        str(section.get("precision", "auto")),
        str(section.get("attention", "auto")),
    )
    if key not in _RESOLVED:
        device = resolve_device(key[0])
        runtime = Runtime(
            device, resolve_precision(key[1], device), resolve_attention(key[2], device)
        )
        log.info(
            "runtime: device %s, precision %s, attention %s",
            runtime.device,
            runtime.precision,
            runtime.attention,
        )
        if device.type == "cuda":
            train = cfg.get("train") or {}
            configure_determinism(bool(train.get("deterministic", True)))
        _RESOLVED[key] = runtime
    return _RESOLVED[key]


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels where torch has them, on CUDA runs only (CPU kernels already are).

    `CUBLAS_WORKSPACE_CONFIG` must be set before cuBLAS starts: this runs when the device is
    resolved, before the model is moved.
    Ops without a deterministic kernel warn instead of failing (`warn_only`).
    """
    if not deterministic:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls on Ampere+ GPUs: ~10 bits of mantissa. Off for CD-T (beta + gamma must stay
    exact to fp32 rounding); training and evaluation in autocast do not go through it."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


@contextlib.contextmanager
def oom_hint(*keys: str) -> Iterator[None]:
    """Turn an out-of-memory error into one line naming the config keys to lower."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        where = "GPU" if "CUDA" in str(err) else "device"
        raise CtsftError(f"out of {where} memory: lower {' or '.join(keys)}") from None


def to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors as contiguous CPU copies: what every artifact on disk holds."""
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
