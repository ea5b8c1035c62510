"""Named tensor shapes in signatures, checked when asked (a small stand-in for jaxtyping).

Why: the CD-T passes move `[S, B, T, H, dh]` tensors (and (beta, gamma) pairs of them) between
a dozen methods; a shape written in a comment drifts, one in the signature is checked by the
tests. Write `x: Annotated[Tensor, "S B T D"]` (`typing.Annotated`: the type, then its dims;
linters read the string as metadata, not a forward reference) and decorate the function with
`@check_shapes`.

Dims are names bound per call (the same name must have the same size across the arguments and
the result of one call); `#S` may also be 1 (a cached total broadcasting over the source sets);
`*` matches any one dim. A (beta, gamma) pair is checked part by part. Checking is off unless
`CTSFT_CHECK_SHAPES=1` is set when the module is imported (the tests do it); off, the decorator
returns the function itself, so the hot path pays nothing.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch

CHECK = os.environ.get("CTSFT_CHECK_SHAPES") == "1"
CHECKED = {"calls": 0}  # calls checked so far (a test asserts that the checks ran)

F = TypeVar("F", bound=Callable[..., Any])
_DIMS = re.compile(r"""^(?:typing\.)?Annotated\[.*,\s*["']([^"']*)["']\]$""")


def _dims(annotation: object) -> list[str] | None:
    """The dims of an `Annotated[..., "dims"]` annotation (a string under postponed evaluation)."""
    if isinstance(annotation, str):
        match = _DIMS.match(annotation.strip())
        return match.group(1).split() if match else None
    metadata = getattr(annotation, "__metadata__", None)
    return str(metadata[0]).split() if metadata else None


def match(value: Any, dims: list[str], bound: dict[str, int], what: str) -> None:
    """Check one tensor (or each part of a pair) against `dims`, binding names in `bound`."""
    if isinstance(value, tuple):
        for part in value:
            match(part, dims, bound, what)
        return
    if not isinstance(value, torch.Tensor):
        return
    shape = tuple(value.shape)
    if len(shape) != len(dims):
        raise AssertionError(f"{what}: shape {shape} is not [{' '.join(dims)}]")
    for size, dim in zip(shape, dims, strict=True):
        if dim == "*":
            continue
        broadcast = dim.startswith("#")
        name = dim.lstrip("#")
        if broadcast and size == 1:
            continue
        known = bound.setdefault(name, size)
        if size != known:
            raise AssertionError(
                f"{what}: shape {shape} is not [{' '.join(dims)}] ({name} is {known} here)"
            )


def check_shapes(fn: F) -> F:
    """Check the `Annotated` arguments and result of `fn` on every call when `CHECK` is on."""
    if not CHECK:
        return fn
    signature = inspect.signature(fn)
    specs = {
        name: dims
        for name, param in signature.parameters.items()
        if (dims := _dims(param.annotation)) is not None
    }
    result = _dims(signature.return_annotation)

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        CHECKED["calls"] += 1
        bound: dict[str, int] = {}
        given = signature.bind(*args, **kwargs).arguments
        for name, dims in specs.items():
            if name in given:
                match(given[name], dims, bound, f"{fn.__qualname__}({name})")
        out = fn(*args, **kwargs)
        if result is not None:
            match(out, result, bound, f"{fn.__qualname__} -> result")
        return out

    return checked  # type: ignore[return-value]
