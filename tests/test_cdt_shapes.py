"""The shapes annotated on the CD-T passes (`ctsft.cdt.shapes`) hold on every tiny family.

The annotations are checked only with `CTSFT_CHECK_SHAPES=1` at import, so the engine runs in a
fresh interpreter with it set; the checker itself is tested here directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import pytest
import torch

from ctsft.cdt import shapes

RUN_ENGINE = """
import torch
from ctsft.cdt import CDTEngine, passes, shapes
from ctsft.models.tiny import TINY_ARCHES, tiny_model

assert shapes.CHECK and hasattr(passes._Pass._project_z, "__wrapped__")
gen = torch.Generator().manual_seed(0)
ids = torch.randint(5, 900, (2, 19), generator=gen)
mask = torch.ones(2, 19, dtype=torch.long)
mask[1, 7:] = 0
batch = {"input_ids": ids, "attention_mask": mask}
for arch in TINY_ARCHES:
    model = tiny_model(arch)
    engine = CDTEngine(model, "encoder" if arch == "bert" else "causal", [5, 6, 7])
    geo = engine.geo
    for mu in (torch.zeros(geo.n_layers, geo.n_heads, geo.d_head),
               torch.zeros(geo.n_layers, 19, geo.n_heads, geo.d_head)):
        cache = engine.clean(batch)
        sets = [[(0, 1)], [(1, 2, 3)], [(0, 0), (1, 1)]]
        engine.decompose(batch, sets, mu, cache=cache)
        engine.decompose(batch, [[(1, 0)], [(1, 3)]], mu, cache=cache)  # the last layer first
        engine.decompose(batch, sets, mu, cache=cache, record_layers=True)
        engine.decompose_naive(batch, sets, mu)
        engine.ablate(cache, [[(0, 1)], [(1, 2)]], mu)
        engine.ablate(cache, [[(0, 1), (1, 2)], [(1, 0), (1, 3)]], mu)
print("checked", shapes.CHECKED["calls"])
"""


def test_the_engine_keeps_its_annotated_shapes() -> None:
    env = {**os.environ, "CTSFT_CHECK_SHAPES": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN_ENGINE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    calls = int(done.stdout.split("checked")[-1])
    assert calls > 1000  # every node of every pass, not a few


def test_the_checker_binds_names_and_broadcasts_only_hash_dims() -> None:
    bound: dict[str, int] = {}
    shapes.match(torch.zeros(3, 2, 5), ["S", "B", "T"], bound, "x")
    assert bound == {"S": 3, "B": 2, "T": 5}
    shapes.match((torch.zeros(3, 2, 5), torch.zeros(1, 2, 5)), ["#S", "B", "T"], bound, "pair")
    with pytest.raises(AssertionError, match=r"S is 3"):
        shapes.match(torch.zeros(1, 2, 5), ["S", "B", "T"], bound, "strict")
    with pytest.raises(AssertionError, match=r"is not \[S B\]"):
        shapes.match(torch.zeros(3, 2, 5), ["S", "B"], bound, "rank")


def test_check_shapes_reads_the_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "CHECK", True)

    @shapes.check_shapes
    def flatten(z: Annotated[torch.Tensor, "S H dh"]) -> Annotated[torch.Tensor, "S D"]:
        return z.flatten(1)

    assert flatten(torch.zeros(2, 3, 4)).shape == (2, 12)

    @shapes.check_shapes
    def wrong(z: Annotated[torch.Tensor, "S H dh"]) -> Annotated[torch.Tensor, "S H"]:
        return z.flatten(1)

    with pytest.raises(AssertionError, match="wrong -> result"):
        wrong(torch.zeros(2, 3, 4))
