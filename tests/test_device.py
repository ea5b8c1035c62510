"""Device and precision without a GPU.

Device mix-ups: on a GPU, a tensor our code creates without `device=` lands on the CPU and the
first op that meets a CUDA tensor fails (or, worse, work silently runs on the CPU). On a CPU-only
machine every tensor is on the CPU, so such a bug cannot fail by itself. `ImplicitCPUGuard` makes
it visible: a `TorchFunctionMode` that records every tensor factory (`zeros`, `arange`, `tensor`,
...) called from a `ctsft` module without an explicit `device`. Running training, evaluation, the
mean baseline, CD-T scoring and ablation under it must record nothing; deleting one `device=` in
the engine makes these tests fail.

Precision: bf16 autocast runs on the CPU too, so the bf16 paths are exercised here and compared
with fp32; CD-T in fp32 stays exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import spearmanr
from torch.overrides import TorchFunctionMode

from ctsft.cdt import CDTEngine
from ctsft.cdt.baseline import batches, mean_baseline
from ctsft.cdt.scores import score_heads
from ctsft.circuit.faithfulness import ablation_report
from ctsft.data import load_split
from ctsft.errors import CtsftError
from ctsft.evaluate import predict
from ctsft.models import load_task_model
from ctsft.runtime import Runtime, resolve_device, resolve_precision, runtime_from_cfg
from ctsft.train import TrainConfig, Trainer, build_plan

pytestmark = pytest.mark.usefixtures("one_thread")

FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor,
    torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace,
    torch.eye,
}  # fmt: skip
CIRCUIT = {"circuit": [[0, 1], [1, 2]], "near_zero": [[0, 0], [1, 3]], "random": [[0, 2], [1, 0]]}


class ImplicitCPUGuard(TorchFunctionMode):
    """Records tensor factories called from `ctsft` code without an explicit `device`."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename == __file__:
                frame = frame.f_back
            module = frame.f_globals.get("__name__", "") if frame is not None else ""
            if module.startswith("ctsft"):
                self.violations.append(f"{func.__name__} in {module}:{frame.f_lineno}")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_split("nusax", "ind", "train").to_list()[:12]


def test_the_guard_sees_an_implicit_cpu_tensor_in_ctsft_code() -> None:
    """The guard itself can fail: a factory without device= in a ctsft module is recorded."""
    namespace = {"__name__": "ctsft.fake", "torch": torch}
    exec("def make():\n    return torch.zeros(3), torch.zeros(3, device='cpu')", namespace)
    with ImplicitCPUGuard() as guard:
        namespace["make"]()
    assert guard.violations == ["zeros in ctsft.fake:2"]


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_qwen2"])
def test_no_implicit_cpu_tensors_in_training_evaluation_and_cdt(
    tiny_model_dirs: dict[str, Path], rows: list[dict], arch: str
) -> None:
    model = load_task_model(tiny_model_dirs[arch], "nusax", max_length=16)
    mu = mean_baseline(model.eval(), rows[:6], "all", 3)  # mu on disk is a CPU tensor
    with ImplicitCPUGuard() as guard:
        plan = build_plan(
            model.hf,
            model.adapter,
            OmegaConf.create({"name": "ctsft", "heads": "circuit"}),
            CIRCUIT,
        )
        trainer = Trainer(model, plan, TrainConfig(epochs=1, max_steps=2, batch_size=4), seed=0)
        trainer.fit(rows, progress=False)
        trainer.finish()
        predict(model, rows, 4)
        mean_baseline(model.eval(), rows[:6], "last", 3)
        engine = CDTEngine.from_task_model(model)
        data = list(batches(model, rows[:6], 3))
        score_heads(engine, data, mu, "directional", head_batch=2, progress=False)
        score_heads(engine, data, mu, "ablation", head_batch=2, progress=False)
        ablation_report(engine, data, mu, [CIRCUIT["circuit"], CIRCUIT["near_zero"]])
    assert guard.violations == []


def _train(model_dir: Path, rows: list[dict], runtime: Runtime) -> tuple:
    model = load_task_model(model_dir, "nusax", max_length=16, runtime=runtime)
    plan = build_plan(
        model.hf, model.adapter, OmegaConf.create({"name": "ctsft", "heads": "circuit"}), CIRCUIT
    )
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    trainer = Trainer(model, plan, TrainConfig(epochs=1, max_steps=3, batch_size=4, lr=1e-3), 0)
    summary = trainer.fit(rows, progress=False)
    trainer.finish()
    return model, before, summary


def test_bf16_autocast_on_cpu_is_close_to_fp32_and_keeps_master_weights_fp32(
    tiny_model_dirs: dict[str, Path], rows: list[dict]
) -> None:
    folder = tiny_model_dirs["tiny_qwen2"]
    fp32, before, s32 = _train(folder, rows, Runtime(torch.device("cpu"), "fp32"))
    bf16, _, s16 = _train(folder, rows, Runtime(torch.device("cpu"), "bf16"))
    assert all(p.dtype == torch.float32 for p in bf16.hf.parameters())  # master weights
    assert s16["final_loss"] == pytest.approx(s32["final_loss"], rel=0.05)
    assert s16["final_loss"] != s32["final_loss"]  # bf16 really ran
    changed = 0
    for name, p16 in bf16.hf.named_parameters():
        p32 = dict(fp32.hf.named_parameters())[name]
        moved = ~torch.eq(p32, before[name])
        # frozen entries stay bit-identical in bf16 as in fp32: the same entries move
        assert torch.equal(~torch.eq(p16, before[name]), moved) or not moved.any(), name
        if moved.any():
            changed += 1
            delta32, delta16 = p32 - before[name], p16 - before[name]
            assert torch.allclose(delta16, delta32, atol=5e-3, rtol=0.2), name
    assert changed > 0
    preds32, labels = predict(fp32, rows, 4)
    preds16, _ = predict(bf16, rows, 4)
    assert (preds32 == preds16).mean() >= 0.75 and len(labels) == len(rows)


def test_bf16_mean_baseline_scores_and_ablation_are_close_to_fp32(
    tiny_model_dirs: dict[str, Path], rows: list[dict]
) -> None:
    folder = tiny_model_dirs["tiny_bert"]
    m32 = load_task_model(folder, "nusax", max_length=16).eval()
    m16 = load_task_model(
        folder, "nusax", max_length=16, runtime=Runtime(torch.device("cpu"), "bf16")
    ).eval()
    with torch.no_grad():  # random init makes every head negligible (scores ~1e-6): scale up
        for model in (m32, m16):
            for name, param in model.hf.named_parameters():
                if param.dim() == 2 and "embeddings" not in name:
                    param.mul_(25)
    mu32 = mean_baseline(m32, rows, "all", 4)
    # mu is taken in the CD-T precision, not the runtime's: fp32 here despite the bf16 runtime
    assert torch.equal(mean_baseline(m16, rows, "all", 4), mu32)
    m16.hf.to(torch.bfloat16)  # what cdt.precision=bf16 does (steps.shared.discovery.cdt_precision)
    mu16 = mean_baseline(m16, rows, "all", 4)
    assert mu16.dtype == torch.float32 and mu16.device.type == "cpu"
    assert not torch.equal(mu16, mu32)
    assert torch.allclose(mu16, mu32, atol=2e-2, rtol=5e-2)

    data = list(batches(m32, rows, 4))
    e32 = CDTEngine.from_task_model(m32)
    dec = e32.decompose(data[0], [[(0, 1)], [(1, 2)]], mu32)
    # fp32 CD-T stays exact: beta + gamma is the forward, to the bias epsilon
    assert torch.allclose(dec.beta + dec.gamma, dec.logits.expand_as(dec.beta), atol=1e-4)
    s32, _ = score_heads(e32, data, mu32, "directional", head_batch=4, progress=False)
    a32, _ = score_heads(e32, data, mu32, "ablation", head_batch=4, progress=False)

    e16 = CDTEngine.from_task_model(m16)
    s16, _ = score_heads(e16, data, mu32, "directional", head_batch=4, progress=False)
    a16, _ = score_heads(e16, data, mu32, "ablation", head_batch=4, progress=False)
    assert s16.dtype == torch.float32 and not torch.equal(s16, s32)
    # the documented bf16 tolerance: rankings agree, values within ~15% of the score scale
    assert spearmanr(s16.flatten(), s32.flatten())[0] >= 0.85
    assert spearmanr(a16.flatten(), a32.flatten())[0] >= 0.85
    assert float((s16 - s32).abs().max()) <= 0.15 * float(s32.abs().max())


def test_runtime_resolves_to_the_cpu_defaults_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    cfg = OmegaConf.create(
        {"runtime": {"device": "auto", "precision": "auto", "attention": "auto"}}
    )
    assert runtime_from_cfg(cfg) == Runtime(torch.device("cpu"), "fp32", "eager")
    with pytest.raises(CtsftError, match="CUDA is not available here: use runtime.device=auto"):
        resolve_device("cuda:1")
    with pytest.raises(CtsftError, match="runtime.device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(CtsftError, match="runtime.precision must be"):
        resolve_precision("int8", torch.device("cpu"))


def test_checkpoint_and_mu_are_cpu_tensors(tiny_model_dirs: dict[str, Path], rows: list[dict]):
    """What lands on disk is device-free: written from any device, loaded on any device."""
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax", max_length=16)
    mu = mean_baseline(model.eval(), rows[:6], "position", 3)
    assert mu.device.type == "cpu" and mu.is_contiguous() and np.isfinite(mu.numpy()).all()


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_mu_of_a_bf16_runtime_gives_an_fp32_source_equal_to_it_a_zero_beta(
    tiny_model_dirs: dict[str, Path], rows: list[dict], arch: str
) -> None:
    """A GPU runs steps under bf16 autocast, CD-T decomposes in fp32: mu must be taken in fp32
    too, or every source carries a rounding offset. One example, per-position mu: mu *is* its
    activation, so the relevant part of a first-layer head, and its beta logits, are exactly 0.
    Deeper heads see the engine's own fp32 arithmetic of the layers below (not the Hugging Face
    forward's): their beta is fp32 rounding, ~1e-7, where a bf16 mu leaves ~1e-2."""
    bf16 = Runtime(torch.device("cpu"), "bf16")
    model = load_task_model(tiny_model_dirs[arch], "nusax", max_length=16, runtime=bf16).eval()
    with torch.no_grad():  # random init makes every head negligible: scale the weights up
        for name, param in model.hf.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.mul_(25)
    batch = next(iter(batches(model, rows[:1], 1)))
    engine = CDTEngine.from_task_model(model)
    first = [[(0, head)] for head in range(4)]
    deeper = [[(1, head)] for head in range(4)]
    mu = mean_baseline(model, rows[:1], "position", 1)
    assert torch.count_nonzero(engine.decompose(batch, first, mu).beta) == 0
    offset = float(engine.decompose(batch, deeper, mu).beta.abs().max())
    assert offset <= 1e-5 * float(engine.decompose(batch, deeper, mu).logits.abs().max())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the runtime's autocast gave
        old = mean_baseline(model, rows[:1], "position", 1)
    assert torch.count_nonzero(engine.decompose(batch, first, old).beta) > 0
    assert float(engine.decompose(batch, deeper, old).beta.abs().max()) > 100 * offset


# ---------------------------------------------------------------- a GPU that was given is used
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID")


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine where torch finds no CUDA, with none of the scheduler's GPU variables set."""
    import ctsft.runtime as runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_RESOLVED", {})
    for name in GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, given",
    [
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}, "SLURM_JOB_GPUS=0"),
        ({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "2"}, "SLURM_GPUS_ON_NODE=2"),
        ({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
    ],
    ids=["job-gpus", "gpus-on-node", "visible-devices-in-a-job"],
)  # fmt: skip
def test_an_allocated_gpu_without_cuda_stops_the_step(no_cuda, env, given):
    for name, value in env.items():
        no_cuda.setenv(name, value)
    no_cuda.setattr(torch.version, "cuda", None)  # a CPU build of torch
    cfg = OmegaConf.create(
        {"runtime": {"device": "auto", "precision": "auto", "attention": "auto"}}
    )
    with pytest.raises(CtsftError) as err:
        runtime_from_cfg(cfg)
    assert str(err.value) == (
        f"{given}: this job was given a GPU, but the installed torch ({torch.__version__}) is a "
        "CPU build: install a CUDA build of torch (pytorch.org), or run with the slurm-cpu "
        "profile (no GPU jobs), or pass runtime.device=cpu to run on the CPU anyway"
    )


def test_a_cuda_build_without_a_driver_says_so(no_cuda):
    from ctsft.runtime import check_allocated_gpu

    no_cuda.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(CtsftError, match=r"^SLURM_JOB_GPUS=3: this job was given a GPU, but "
                       r"torch .* \(CUDA 12.4\) finds no usable GPU \(NVIDIA driver or device "
                       r"missing\): install a CUDA build"):  # fmt: skip
        check_allocated_gpu({"SLURM_JOB_GPUS": "3"})


def test_runtime_device_cpu_accepts_the_cpu(no_cuda):
    no_cuda.setenv("SLURM_JOB_ID", "7")
    no_cuda.setenv("SLURM_JOB_GPUS", "0")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"CUDA_VISIBLE_DEVICES": ""},
        {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "NoDevFiles"},
        {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"},
        {"SLURM_JOB_ID": "7"},  # a slurm-cpu job
    ],
    ids=["nothing", "empty", "no-dev-files", "zero-gpus", "cpu-job"],
)
def test_no_allocation_runs_on_the_cpu(no_cuda, env):
    for name, value in env.items():
        no_cuda.setenv(name, value)
    assert resolve_device("auto") == torch.device("cpu")


def test_visible_devices_outside_a_scheduler_job_only_warn(no_cuda, caplog):
    """A shell or CI image may export CUDA_VISIBLE_DEVICES on a machine without a GPU."""
    no_cuda.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level("WARNING", logger="ctsft.runtime"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "CUDA_VISIBLE_DEVICES=0 names a GPU, but" in caplog.text
