"""Shared plumbing of `python -m ctsft.steps.<step> [overrides...]` entry points."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from ctsft.config import compose
from ctsft.errors import CtsftError

log = logging.getLogger("ctsft")


def setup(cfg: DictConfig) -> None:
    """Seed-independent process setup: logging format and torch threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def run_step(step: Callable[[DictConfig], object], argv: list[str] | None = None) -> int:
    """Compose the config from `argv` overrides, run `step(cfg)`, turn user errors into one line.

    `--print-config` prints the composed config and exits.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--print-config" in args:
            args.remove("--print-config")
            print(OmegaConf.to_yaml(compose(args)))
            return 0
        cfg = compose(args)
        setup(cfg)
        step(cfg)
    except CtsftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
