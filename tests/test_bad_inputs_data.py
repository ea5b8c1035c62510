"""Bad inputs of the data layer, the step-to-step artifacts and the atomic writers.

Every case asserts the one-line `CtsftError` (the file, what is wrong, what to do) and that
nothing half-written is left behind. The real data under data_root() is only ever copied.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ctsft import artifacts
from ctsft.adapters import Geometry
from ctsft.cdt import scores_table
from ctsft.config import compose
from ctsft.data import data_root, load_split
from ctsft.errors import CtsftError
from ctsft.io import atomic_path, current_umask, read_json, write_json
from ctsft.models import load_task_model

GEO = Geometry(n_layers=2, n_heads=4, n_kv_heads=4, d_head=8, d_model=32)
OTHER_GEO = Geometry(n_layers=3, n_heads=4, n_kv_heads=4, d_head=8, d_model=32)


def one_line(fn: Callable[[], object], *fragments: str) -> str:
    """Run `fn`, expect a one-line CtsftError holding every fragment; return the message."""
    with pytest.raises(CtsftError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def no_temporaries(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, f"temporaries left behind: {left}"


# -- NusaX ---------------------------------------------------------------------------------------
@pytest.fixture
def nusax(tmp_path: Path) -> Path:
    """A copy of NusaX Indonesian under tmp_path/nusax/ind (the folder is returned)."""
    target = tmp_path / "nusax" / "ind"
    shutil.copytree(data_root() / "nusax" / "ind", target)
    for file in target.iterdir():
        file.chmod(0o644)
    return target


def _load_nusax(folder: Path, split: str = "train") -> Callable[[], object]:
    return lambda: load_split("nusax", "ind", split, root=folder.parent.parent)


def _rewrite_lines(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(edit(lines)), encoding="utf-8")


def test_the_unbroken_copy_loads(nusax: Path) -> None:
    assert len(_load_nusax(nusax)()) == 500


def test_nusax_missing_file(nusax: Path) -> None:
    (nusax / "valid.csv").unlink()
    one_line(_load_nusax(nusax, "valid"), "missing data file", "valid.csv", "data.root")


def test_nusax_missing_column(nusax: Path) -> None:
    (nusax / "train.csv").write_text("id,text\n1,bagus sekali\n")
    one_line(_load_nusax(nusax), "train.csv", "missing column(s) label", "restore the original")


def test_nusax_renamed_header(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: ["id,text,sentiment\n", *ls[1:]])
    one_line(
        _load_nusax(nusax),
        "train.csv",
        "missing column(s) label",
        "unexpected column(s) sentiment",
        "expected id,text,label",
    )


def test_nusax_extra_column(nusax: Path) -> None:
    (nusax / "train.csv").write_text("id,text,label,source\n1,bagus,positive,web\n")
    one_line(_load_nusax(nusax), "train.csv", "unexpected column(s) source")


def test_nusax_missing_header_row(nusax: Path) -> None:
    """A file without its header: the first row is taken as one and refused."""
    _rewrite_lines(nusax / "train.csv", lambda ls: ls[1:])
    one_line(_load_nusax(nusax), "train.csv", "missing column(s) id, label, text")


def test_nusax_undecodable_bytes(nusax: Path) -> None:
    data = (nusax / "train.csv").read_bytes()
    (nusax / "train.csv").write_bytes(data[:300] + "café".encode("latin-1") + data[300:])
    one_line(_load_nusax(nusax), "train.csv", "is not UTF-8 text (byte 0xe9", "convert it to UTF-8")


def test_nusax_empty_file(nusax: Path) -> None:
    (nusax / "train.csv").write_bytes(b"")
    one_line(_load_nusax(nusax), "train.csv", "is empty (no header row)")


def test_nusax_header_only(nusax: Path) -> None:
    (nusax / "train.csv").write_text("id,text,label\n")
    one_line(_load_nusax(nusax), "train.csv", "is empty", "has no rows", "restore the original")


def test_nusax_label_outside_the_label_set(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: [*ls[:3], "9001,marah sekali,angry\n", *ls[3:]])
    one_line(
        _load_nusax(nusax),
        "unexpected label 'angry' at line 4",
        "train.csv",
        "negative, neutral, positive",
        "fix that row",
    )


def test_nusax_empty_text(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: [*ls[:2], '9001,"  ",neutral\n', *ls[2:]])
    one_line(_load_nusax(nusax), "train.csv", "line 3 has an empty text", "remove that row")


def test_nusax_duplicate_ids(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: [*ls, ls[1].split(",")[0] + ",lagi,positive\n"])
    one_line(
        _load_nusax(nusax), "train.csv", "repeats id", "(lines 2 and 502)", "remove the duplicate"
    )


def test_nusax_row_with_too_many_fields(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: [*ls[:5], "9001,bagus,tapi,positive\n", *ls[5:]])
    one_line(_load_nusax(nusax), "train.csv", "line 6 has 4 fields, the header has 3", "quoting")


def test_nusax_row_with_too_few_fields(nusax: Path) -> None:
    _rewrite_lines(nusax / "train.csv", lambda ls: [*ls[:2], "9001,positive\n", *ls[2:]])
    one_line(_load_nusax(nusax), "train.csv", "line 3 has 2 fields")


# -- XNLI ----------------------------------------------------------------------------------------
XNLI_HEADER = "language\tgold_label\tsentence1\tsentence2\tgenre\tidx\n"


@pytest.fixture(scope="module")
def xnli_lines() -> list[str]:
    """The first 30 parallel examples of en, de and sw of the real XNLI dev file."""
    keep = {"en", "de", "sw"}
    out = []
    with gzip.open(data_root() / "xnli" / "xnli.dev.tsv.gz", "rt", encoding="utf-8") as handle:
        assert handle.readline() == XNLI_HEADER
        for line in handle:
            fields = line.split("\t")
            if fields[0] in keep and int(fields[5]) < 30:
                out.append(line)
    assert len(out) == 90
    return out


def _write_xnli(root: Path, lines: list[str], raw: bytes | None = None) -> Path:
    path = root / "xnli" / "xnli.dev.tsv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        raw if raw is not None else gzip.compress((XNLI_HEADER + "".join(lines)).encode())
    )
    return path


def _load_xnli(root: Path, lang: str = "en", split: str = "train") -> Callable[[], object]:
    return lambda: load_split("xnli", lang, split, root=root)


def test_xnli_small_copy_loads(tmp_path: Path, xnli_lines: list[str]) -> None:
    _write_xnli(tmp_path, xnli_lines)
    assert len(_load_xnli(tmp_path)()) == 27 and len(_load_xnli(tmp_path, "de", "valid")()) == 3


def test_xnli_truncated_gzip(tmp_path: Path, xnli_lines: list[str]) -> None:
    whole = gzip.compress((XNLI_HEADER + "".join(xnli_lines)).encode())
    _write_xnli(tmp_path, [], raw=whole[: len(whole) // 2])
    one_line(
        _load_xnli(tmp_path), "xnli.dev.tsv.gz", "is truncated or not a valid gzip file", "restore"
    )


def test_xnli_not_gzip_at_all(tmp_path: Path, xnli_lines: list[str]) -> None:
    _write_xnli(tmp_path, [], raw=(XNLI_HEADER + "".join(xnli_lines)).encode())
    one_line(_load_xnli(tmp_path), "xnli.dev.tsv.gz", "not a valid gzip file")


def test_xnli_not_parallel_across_languages(tmp_path: Path, xnli_lines: list[str]) -> None:
    dropped = [ln for ln in xnli_lines if not (ln.startswith("de\t") and ln.endswith("\t17\n"))]
    _write_xnli(tmp_path, dropped)
    one_line(
        _load_xnli(tmp_path),
        "is not parallel across languages: language 'de'",
        "1 missing (e.g. idx 17)",
        "train/valid split",
    )


def test_xnli_tab_inside_a_sentence(tmp_path: Path, xnli_lines: list[str]) -> None:
    broken = list(xnli_lines)
    broken[4] = broken[4].replace(" ", "\t", 1)
    _write_xnli(tmp_path, broken)
    one_line(_load_xnli(tmp_path), "line 6 has 7 fields, the header has 6")


def test_xnli_duplicate_idx(tmp_path: Path, xnli_lines: list[str]) -> None:
    _write_xnli(tmp_path, [*xnli_lines, xnli_lines[0]])
    one_line(_load_xnli(tmp_path), "repeats idx of language 'de' '0'", "(lines 2 and 92)")


def test_xnli_idx_not_a_number(tmp_path: Path, xnli_lines: list[str]) -> None:
    broken = list(xnli_lines)
    broken[0] = broken[0].rsplit("\t", 1)[0] + "\tzero\n"
    _write_xnli(tmp_path, broken)
    one_line(_load_xnli(tmp_path), "line 2 has idx 'zero', not a whole number")


def test_xnli_empty_hypothesis_and_unknown_label(tmp_path: Path, xnli_lines: list[str]) -> None:
    fields = xnli_lines[0].split("\t")
    _write_xnli(tmp_path, ["\t".join([*fields[:3], " ", *fields[4:]]), *xnli_lines[1:]])
    one_line(_load_xnli(tmp_path), "line 2 has an empty sentence2")
    _write_xnli(tmp_path, ["\t".join([fields[0], "maybe", *fields[2:]]), *xnli_lines[1:]])
    one_line(_load_xnli(tmp_path), "unexpected label 'maybe' at line 2", "entailment")


def test_a_language_absent_from_the_file(tmp_path: Path, xnli_lines: list[str]) -> None:
    _write_xnli(tmp_path, xnli_lines)
    one_line(_load_xnli(tmp_path, "fr"), "is empty: split 'train' of xnli/fr has no rows")


# -- mu ------------------------------------------------------------------------------------------
def _mu(folder: Path, shape: tuple[int, ...] = (2, 4, 8), record: dict | None = None) -> Path:
    path = folder / "mu.safetensors"
    artifacts.write_mu(
        path, torch.randn(shape), {"shape": list(shape)} if record is None else record
    )
    return path


def test_a_good_mu_reads_back(tmp_path: Path) -> None:
    mu, record = artifacts.read_mu(_mu(tmp_path), GEO)
    assert mu.shape == (2, 4, 8) and record["shape"] == [2, 4, 8]


def test_mu_missing(tmp_path: Path) -> None:
    one_line(
        lambda: artifacts.read_mu(tmp_path / "mu.safetensors"),
        "mean baseline",
        "does not exist",
        "`snakemake --forcerun mean_baseline`",
    )


def test_mu_truncated(tmp_path: Path) -> None:
    path = _mu(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    one_line(
        lambda: artifacts.read_mu(path),
        str(path),
        "is truncated or not a safetensors file",
        "--forcerun mean_baseline",
    )


def test_mu_without_its_tensor_or_with_nan(tmp_path: Path) -> None:
    path = tmp_path / "mu.safetensors"
    save_file({"other": torch.zeros(2, 4, 8)}, str(path))
    (tmp_path / "mu.safetensors.json").write_text('{"shape": [2, 4, 8]}')
    one_line(lambda: artifacts.read_mu(path), "has no tensor 'mu'", "--forcerun mean_baseline")
    save_file({"mu": torch.full((2, 4, 8), float("nan"))}, str(path))
    one_line(lambda: artifacts.read_mu(path), "holds NaN or infinite values")


def test_mu_of_another_model(tmp_path: Path) -> None:
    path = _mu(tmp_path, (3, 4, 8))
    one_line(
        lambda: artifacts.read_mu(path, GEO),
        "is for 3 layers x 4 heads x 8 dims, the model has 2 x 4 x 8",
        "--forcerun mean_baseline",
    )


def test_mu_sidecar_missing_corrupt_or_mismatched(tmp_path: Path) -> None:
    path = _mu(tmp_path)
    sidecar = tmp_path / "mu.safetensors.json"
    sidecar.write_text('{"shape": [2, 4')
    one_line(lambda: artifacts.read_mu(path), "mu.safetensors.json is not valid JSON")
    sidecar.write_text('{"shape": [2, 4, 16]}')
    one_line(lambda: artifacts.read_mu(path), "has shape [2, 4, 8] but its record says [2, 4, 16]")
    sidecar.unlink()
    one_line(lambda: artifacts.read_mu(path), "mean baseline record", "does not exist")


# -- scores --------------------------------------------------------------------------------------
def _scores(folder: Path, layers: int = 2, heads: int = 4) -> Path:
    path = folder / "scores.tsv"
    artifacts.write_scores(path, scores_table(torch.randn(layers, heads), 9, "directional"))
    return path


def _edit_tsv(path: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    path.write_text("".join("\t".join(r) + "\n" for r in edit(rows)))


def test_a_good_score_table_reads_back(tmp_path: Path) -> None:
    df = artifacts.read_scores(_scores(tmp_path), GEO)
    assert len(df) == 8 and df["layer"].dtype.kind == "i"


def test_scores_missing_column(tmp_path: Path) -> None:
    path = _scores(tmp_path)
    _edit_tsv(path, lambda rows: [r[:2] + r[3:] for r in rows])
    one_line(lambda: artifacts.read_scores(path), "lacks column(s) score", "--forcerun score_heads")


def test_scores_with_nan_or_text(tmp_path: Path) -> None:
    path = _scores(tmp_path)
    _edit_tsv(path, lambda rows: [rows[0], [*rows[1][:2], "nan", *rows[1][3:]], *rows[2:]])
    one_line(lambda: artifacts.read_scores(path), "NaN or non-numeric score in data row 1")
    _edit_tsv(path, lambda rows: [rows[0], [*rows[1][:2], "big", *rows[1][3:]], *rows[2:]])
    one_line(lambda: artifacts.read_scores(path), "non-numeric score in data row 1 ('big')")


def test_scores_empty_or_truncated(tmp_path: Path) -> None:
    path = _scores(tmp_path)
    path.write_text("")
    one_line(lambda: artifacts.read_scores(path), "head score table", "is empty", "score_heads")
    path = _scores(tmp_path)
    _edit_tsv(path, lambda rows: rows[:7])  # a copy cut after 6 heads
    one_line(lambda: artifacts.read_scores(path), "has 6 rows, not the 2 x 4 = 8 heads")


def test_scores_of_another_model(tmp_path: Path) -> None:
    path = _scores(tmp_path, layers=3)
    one_line(
        lambda: artifacts.read_scores(path, GEO),
        "has 12 heads",
        "the model has 2 layers x 4 heads",
        "--forcerun score_heads",
    )


def test_scores_duplicate_head(tmp_path: Path) -> None:
    path = _scores(tmp_path)
    _edit_tsv(path, lambda rows: [*rows, rows[3]])
    one_line(lambda: artifacts.read_scores(path), "lists head (layer 0, head 2) twice")


def test_select_circuit_refuses_a_bad_table_and_writes_nothing(tmp_path: Path) -> None:
    from ctsft.steps import select_circuit

    path = _scores(tmp_path)
    _edit_tsv(path, lambda rows: [rows[0], [*rows[1][:2], "", *rows[1][3:]], *rows[2:]])
    before = listing(tmp_path)
    cfg = compose(
        ["model=tiny_bert", "cdt.k=2", f"io.scores={path}", f"io.circuit={tmp_path / 'c.json'}"]
    )
    one_line(lambda: select_circuit.run(cfg), "NaN or non-numeric score", "score_heads")
    assert listing(tmp_path) == before


# -- circuit -------------------------------------------------------------------------------------
CIRCUIT = {
    "k": 2, "n_heads_total": 8, "circuit": [[0, 1], [1, 2]], "near_zero": [[0, 0], [1, 3]],
    "random": [[0, 2], [1, 0]],
}  # fmt: skip


def _circuit(folder: Path, **changes: object) -> Path:
    path = folder / "circuit.json"
    path.write_text(json.dumps({**CIRCUIT, **changes}))
    return path


def test_a_good_circuit_reads_back(tmp_path: Path) -> None:
    assert artifacts.read_circuit(_circuit(tmp_path), GEO)["k"] == 2


def test_circuit_bad_json(tmp_path: Path) -> None:
    path = _circuit(tmp_path)
    path.write_text(path.read_text()[:25])
    one_line(
        lambda: artifacts.read_circuit(path),
        "circuit file",
        "is not valid JSON",
        "--forcerun select_circuit",
    )


def test_circuit_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps({"k": 2, "circuit": CIRCUIT["circuit"]}))
    one_line(lambda: artifacts.read_circuit(path), "has no 'near_zero', 'random' entry")


def test_circuit_malformed_lists(tmp_path: Path) -> None:
    one_line(
        lambda: artifacts.read_circuit(_circuit(tmp_path, circuit=[[0, 1], [1]])),
        "'circuit' entry that is not a list of [layer, head]",
    )
    one_line(lambda: artifacts.read_circuit(_circuit(tmp_path, k=3)), "lists 2 'circuit' heads")
    one_line(
        lambda: artifacts.read_circuit(_circuit(tmp_path, near_zero=[[0, 0], [0, 0]])),
        "repeats a head in 'near_zero'",
    )


def test_circuit_head_outside_the_model(tmp_path: Path) -> None:
    path = _circuit(tmp_path, circuit=[[0, 1], [2, 3]])
    one_line(
        lambda: artifacts.read_circuit(path, GEO),
        "names head (2, 3) in 'circuit', outside this model (2 layers x 4 heads",
        "--forcerun select_circuit",
    )
    path = _circuit(tmp_path, n_heads_total=12)
    one_line(lambda: artifacts.read_circuit(path, GEO), "was selected among 12 heads")


def test_transfer_refuses_a_corrupt_circuit_and_writes_nothing(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from ctsft.steps import transfer

    path = _circuit(tmp_path)
    path.write_text("{")
    before = listing(tmp_path)
    cfg = compose(
        ["model=tiny_bert", "train=tiny", "method=ctsft", "task.train_size=12", "threads=1"]
        + [f"io.proxy_checkpoint={tiny_model_dirs['tiny_bert']}", f"io.circuit={path}"]
        + [f"io.checkpoint={tmp_path / 'ckpt'}"]
    )
    one_line(lambda: transfer.run(cfg), "circuit.json is not valid JSON", "select_circuit")
    assert listing(tmp_path) == before


def test_transfer_names_the_circuit_file_of_a_head_outside_the_model(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The same message as faithfulness and mechanism give: the file, the head, the fix."""
    path = _circuit(tmp_path, circuit=[[0, 1], [2, 3]])
    before = listing(tmp_path)
    cfg = compose(
        ["model=tiny_bert", "train=tiny", "method=ctsft", "task.train_size=12", "threads=1"]
        + [f"io.proxy_checkpoint={tiny_model_dirs['tiny_bert']}", f"io.circuit={path}"]
        + [f"io.checkpoint={tmp_path / 'ckpt'}"]
    )
    from ctsft.steps import transfer

    message = one_line(lambda: transfer.run(cfg))
    assert message == one_line(lambda: artifacts.read_circuit(path, GEO))
    assert message.startswith(f"circuit file {path} names head (2, 3) in 'circuit', outside")
    assert message.endswith("rerun with `snakemake --forcerun select_circuit`")
    assert listing(tmp_path) == before


# -- faithfulness and metrics --------------------------------------------------------------------
FAITH = {
    "k": 2, "clean_accuracy": 0.5, "clean_margin": 0.1,
    "circuit": {"accuracy": 0.4, "margin_drop": 0.05},
    "near_zero": {"accuracy": 0.5, "margin_drop": 0.0},
    "random": [{"accuracy": 0.5, "margin_drop": 0.01}],
}  # fmt: skip


def test_faithfulness_report(tmp_path: Path) -> None:
    path = tmp_path / "faithfulness.json"
    path.write_text(json.dumps(FAITH))
    assert artifacts.read_faithfulness(path)["k"] == 2
    path.write_text(json.dumps(FAITH)[:-10])
    one_line(
        lambda: artifacts.read_faithfulness(path), "is not valid JSON", "--forcerun faithfulness"
    )
    path.write_text(json.dumps({k: v for k, v in FAITH.items() if k != "clean_margin"}))
    one_line(lambda: artifacts.read_faithfulness(path), "has no 'clean_margin' entry")
    path.write_text(json.dumps({**FAITH, "circuit": {"accuracy": 0.4, "margin_drop": None}}))
    one_line(lambda: artifacts.read_faithfulness(path), "no finite accuracy and margin_drop")


def test_baseline_metrics_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "proxy_eval" / "metrics.json"
    path.parent.mkdir()
    path.write_text('{"accuracy": 0.7, "proxy_accuracy": ')
    one_line(lambda: artifacts.read_metrics(path), "is not valid JSON", "evaluate_proxy")
    path.write_text('{"accuracy": 0.7}')
    one_line(lambda: artifacts.read_metrics(path), "has no 'proxy_accuracy'")


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """A trained-looking tiny_bert checkpoint folder (task_model.json written by `save`)."""
    model = load_task_model(tiny_model_dirs["tiny_bert"], "nusax")
    folder = tmp_path / "run" / "checkpoint"
    model.save(folder, extra={"training": {"config": {"model": {"name": "tiny_bert"}}}})
    return folder


def test_checkpoint_truncated_weights(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_line(
        lambda: load_task_model(checkpoint, "nusax"),
        "cannot load model from",
        "model.safetensors is truncated or corrupt",
        "`snakemake --forcerun transfer`",
    )


def test_checkpoint_of_the_wrong_kind(checkpoint: Path, tiny_model_dirs: dict[str, Path]) -> None:
    one_line(
        lambda: load_task_model(checkpoint, "nusax", kind="causal"),
        "was saved as a model of kind encoder, but model.kind is causal",
        "--forcerun transfer",
    )
    one_line(
        lambda: load_task_model(tiny_model_dirs["tiny_llama"], "nusax", kind="encoder"),
        "holds a llama model, a causal architecture, but model.kind is encoder",
        "--forcerun prepare_model",
    )


def test_checkpoint_of_another_model_family(
    checkpoint: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    one_line(
        lambda: load_task_model(checkpoint, "nusax", model_name="tiny_qwen2"),
        "was made from model tiny_bert, not tiny_qwen2",
        "set model=tiny_bert",
    )
    one_line(
        lambda: load_task_model(tiny_model_dirs["tiny_llama"], "nusax", model_name="tiny_qwen2"),
        "was made from model tiny_llama, not tiny_qwen2",
    )


def test_a_folder_without_provenance_proves_its_family_by_its_config(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A copied or hand-made folder (no provenance.json) used as another model is refused by
    its own config.json's model_type, not accepted for any family."""
    folder = tmp_path / "copied_qwen2"
    shutil.copytree(tiny_model_dirs["tiny_qwen2"], folder)
    (folder / "provenance.json").unlink(missing_ok=True)
    one_line(
        lambda: load_task_model(folder, "nusax", kind="causal", model_name="tiny_llama"),
        f"model folder {folder} holds a qwen2 model",
        "by its config.json, but model=tiny_llama is llama: set model= to the folder's model",
    )
    for accepted in ("tiny_qwen2", "hub:org/any"):  # its own family; a hub model: any family
        assert load_task_model(folder, "nusax", kind="causal", model_name=accepted).kind == "causal"


def test_every_registered_model_declares_its_family() -> None:
    from ctsft.config_files import group_config
    from ctsft.models.registry import MODELS
    from ctsft.models.tiny import tiny_config

    for name, spec in MODELS.items():
        types = group_config("model", name)["model_types"]
        assert types, name
        if spec.tiny_arch:
            assert types == [tiny_config(spec.tiny_arch).model_type], name


def test_checkpoint_of_another_task(checkpoint: Path) -> None:
    one_line(
        lambda: load_task_model(checkpoint, "xnli"),
        "was trained on nusax, not xnli",
        "set task=nusax",
        "--forcerun transfer",
    )


def test_checkpoint_with_corrupt_records(checkpoint: Path) -> None:
    (checkpoint / "task_model.json").write_text('{"kind": "encoder", ')
    one_line(lambda: load_task_model(checkpoint, "nusax"), "task_model.json is not valid JSON")
    (checkpoint / "config.json").write_bytes(b"\xff\xfe")
    one_line(lambda: load_task_model(checkpoint, "nusax"), "config.json is not UTF-8")
    proxy = checkpoint.with_name("proxy_checkpoint")
    checkpoint.rename(proxy)
    one_line(lambda: load_task_model(proxy, "nusax"), "--forcerun finetune")


# -- io ------------------------------------------------------------------------------------------
@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_honour_the_umask(tmp_path: Path, umask_002: None) -> None:
    assert current_umask() == 0o002
    with atomic_path(tmp_path / "mu.safetensors") as tmp:
        save_file({"mu": torch.zeros(2)}, str(tmp))  # safetensors itself writes 0600
    write_json(tmp_path / "record.json", {"a": 1})
    with atomic_path(tmp_path / "folder") as tmp:
        tmp.mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("x")
    for file in ("mu.safetensors", "record.json", "folder/model.safetensors", "folder/sub/x.txt"):
        assert _mode(tmp_path / file) == 0o664, file
    assert _mode(tmp_path / "folder") == _mode(tmp_path / "folder" / "sub") == 0o775
    os.umask(0o077)
    write_json(tmp_path / "private.json", {})
    assert _mode(tmp_path / "private.json") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "scores.tsv"
    target.write_text("old\n")
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old\n"
    no_temporaries(tmp_path)
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "ckpt") as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert listing(tmp_path) == ["scores.tsv"]


def test_temporaries_of_a_killed_write_are_cleared(tmp_path: Path) -> None:
    (tmp_path / ".circuit.json.abc123.tmp").write_text("{half")
    (tmp_path / ".checkpoint.def456.tmp").mkdir()
    write_json(tmp_path / "circuit.json", {"k": 1})
    assert listing(tmp_path) == [".checkpoint.def456.tmp", "circuit.json"]
    with atomic_path(tmp_path / "checkpoint") as tmp:
        tmp.mkdir()
    assert listing(tmp_path) == ["checkpoint", "circuit.json"]


def test_read_json_of_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "provenance.json").write_text('{"model": ')
    one_line(lambda: read_json(tmp_path / "provenance.json"), "provenance.json is not valid JSON")
    one_line(lambda: read_json(tmp_path / "none.json"), "none.json does not exist")
