"""Paired timing of the CD-T passes of two commits in one process (no slower after a refactor).

    .venv/bin/python benchmarks/bench_cdt_refactor.py --old 3b14883 [--examples 4] [--repeats 3]

The passes module of `--old` (`git show <rev>:src/ctsft/cdt/passes.py`) is loaded beside the
current one under another module name; `ctsft.cdt.engine`'s pass classes are switched between the
two before each call, so both run on the same engine, model, data, cache layout and node rules,
alternating (old, new, new, old, ...) so that both see the same machine load. Timed:
- e5_small (prepared `results/models/e5_small`, else a random BERT of its shape), all 144 heads
  through `score_heads` as the workflow calls it: directional (fast path), ablation;
- tiny Qwen2 (GQA, rotary), per call: `decompose`, `decompose_naive`, `ablate`, many calls.
Medians of wall and process CPU time (one thread); the outputs of both are compared with
`torch.equal`. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

import ctsft.cdt.engine as engine_module
from ctsft.cdt import passes as new_passes
from ctsft.cdt.baseline import batches, mean_baseline
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.rules import CDTOptions
from ctsft.cdt.scores import score_heads
from ctsft.data import balanced_sample, load_split
from ctsft.models.tiny import tiny_model
from ctsft.provenance import REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from bench_cdt_path import E5_DIR, load_model  # noqa: E402

PASSES = ("AblatePass", "CleanPass", "DecomposePass", "NaivePass")


def old_passes(rev: str) -> ModuleType:
    """The passes module of commit `rev`, imported as `ctsft_cdt_passes_old`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/ctsft/cdt/passes.py"],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "ctsft_cdt_passes_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ctsft_cdt_passes_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def use(module: ModuleType) -> None:
    """Make `CDTEngine` run the pass classes of `module`."""
    for name in PASSES:
        setattr(engine_module, name, getattr(module, name))


def paired(
    variants: dict[str, ModuleType], call: Callable[[], object], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, object]]:
    """Wall and CPU seconds of `call` per variant, alternating ABBA; the last outputs."""
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    out: dict[str, object] = {}
    names = list(variants)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            use(variants[name])
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = call()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    use(new_passes)
    return wall, cpu, out


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, tuple | list):
        return isinstance(b, tuple | list) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit whose passes.py to compare with")
    parser.add_argument("--model-dir", type=Path, default=E5_DIR)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {"old": old_passes(args.old), "new": new_passes}
    results: dict[str, float] = {}
    equal = True

    def report(label: str, wall: dict, cpu: dict, out: dict, scale: float = 1.0) -> None:
        nonlocal equal
        w = {v: statistics.median(t) * scale for v, t in wall.items()}
        c = {v: statistics.median(t) * scale for v, t in cpu.items()}
        eq = same(out["old"], out["new"])
        equal &= eq
        unit = "s" if scale == 1.0 else "ms"
        print(
            f"  {label:26s} wall old {w['old']:8.3f} new {w['new']:8.3f} {unit} "
            f"(new/old {w['new'] / w['old']:.3f}); CPU old {c['old']:8.3f} new {c['new']:8.3f} "
            f"(new/old {c['new'] / c['old']:.3f}); torch.equal {eq}"
        )
        results[f"{label}_cpu_ratio"] = c["new"] / c["old"]

    model, name = load_model(args.model_dir)
    pool = load_split("nusax", "ind", "train")
    examples = list(balanced_sample(pool, -(-args.examples // 3), seed=0))[: args.examples]
    mu = mean_baseline(model, examples, "all", len(examples))
    data = list(batches(model, examples, len(examples)))
    engine = CDTEngine.from_task_model(model, CDTOptions())
    print(f"{name}: {len(examples)} examples, {args.repeats} repeats per variant, one thread")
    for kind in ("directional", "ablation"):
        wall, cpu, out = paired(
            variants,
            lambda kind=kind: score_heads(engine, data, mu, kind, 12, progress=False)[0],
            args.repeats,
        )
        report(f"e5 {kind}", wall, cpu, out)

    qwen = tiny_model("qwen2").eval()
    tiny = CDTEngine(qwen, "causal", [5, 6, 7])
    geo = tiny.geo
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 900, (4, 24), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    tiny_mu = 0.1 * torch.randn(geo.n_layers, geo.n_heads, geo.d_head, generator=gen)
    sets = [[(layer, head)] for layer in range(geo.n_layers) for head in range(geo.n_heads)]
    cache = tiny.clean(batch)
    calls = {
        "tiny decompose": lambda: tiny.decompose(batch, sets, tiny_mu, cache=cache).beta,
        "tiny naive": lambda: tiny.decompose_naive(batch, sets, tiny_mu).beta,
        "tiny ablate": lambda: tiny.ablate(cache, sets, tiny_mu),
    }
    print(f"tiny Qwen2: {len(sets)} single-head sets, batch 4 x 24, per call")
    for label, call in calls.items():
        call()  # warm-up

        def many(call: Callable[[], object] = call) -> object:
            for _ in range(args.tiny_calls - 1):
                call()
            return call()

        wall, cpu, out = paired(variants, many, args.repeats * 2)
        report(label, wall, cpu, out, scale=1000.0 / args.tiny_calls)
    print(
        "RESULT "
        + " ".join(f"{k.replace(' ', '_')}={v:.3f}" for k, v in results.items())
        + f" all_equal={equal}"
    )


if __name__ == "__main__":
    main()
