"""The README's grid results and docs/results.md are generated from the tables the run wrote
(ctsft.report.results_doc), never copied by hand: the README's block must be exactly what the
tables in docs/results.md give, and those tables the run's own files where the run exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctsft.errors import CtsftError
from ctsft.report import results_doc as rd

REPO = Path(__file__).resolve().parents[1]
GRID_TABLES = REPO / "results" / "nusax_grid" / "tables"


def test_readme_block_is_what_the_tables_of_docs_results_give() -> None:
    tables = rd.tables_of_page((REPO / "docs" / "results.md").read_text())
    assert set(rd.README_TABLES) <= set(tables), sorted(tables)
    readme = (REPO / "README.md").read_text()
    assert rd.readme_block_of(readme) == rd.readme_block(tables)


@pytest.mark.skipif(not GRID_TABLES.is_dir(), reason="no results/nusax_grid (make reproduce-grid)")
def test_docs_results_holds_the_runs_own_tables() -> None:
    page = rd.tables_of_page((REPO / "docs" / "results.md").read_text())
    assert page == {name: text.rstrip() + "\n" for name, text in rd.read_tables(GRID_TABLES).items()}  # fmt: skip


def _tables(folder: Path, numbers: dict[str, str]) -> Path:
    folder.mkdir()
    for name, number in numbers.items():
        (folder / f"{name}.md").write_text(f"**{name}**\n\n| method | accuracy |\n|---|---:|\n| ctsft | {number} |\n")  # fmt: skip
    return folder


def test_write_puts_every_table_in_the_page_and_two_in_the_readme(tmp_path: Path) -> None:
    numbers = {name: f"{i}1.5" for i, name in enumerate([*rd.LEADING, "table1_nusax", "table3_forgetting"])}  # fmt: skip
    tables = _tables(tmp_path / "tables", numbers)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{rd.README_START}\nold 99.9\n{rd.README_END}\n\nafter\n")
    page = tmp_path / "results.md"
    rd.write(tables, page, readme)
    text = readme.read_text()
    assert (
        text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "99.9" not in text
    )
    block = rd.readme_block_of(text)
    shown = [n for n, number in numbers.items() if f"| {number} |" in block]
    assert shown == list(rd.README_TABLES)
    back = rd.tables_of_page(page.read_text())
    assert list(back)[:3] == list(rd.LEADING) and set(back) == set(numbers)
    assert all(f"| ctsft | {numbers[n]} |" in back[n] for n in numbers)
    # a README edited by hand no longer matches its tables
    edited = text.replace(f"| {numbers[rd.README_TABLES[0]]} |", "| 99.0 |")
    assert rd.readme_block_of(edited) != rd.readme_block(back)


def test_missing_tables_or_markers_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CtsftError, match="run the grid's tables first"):
        rd.read_tables(_tables(tmp_path / "t", {"table1_nusax": "1"}))
    with pytest.raises(CtsftError, match="README has no block"):
        rd.readme_block_of("# no markers\n")
