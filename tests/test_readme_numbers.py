"""The README's lite numbers are the committed results', rendered, never typed."""

import csv
import shutil

import pytest

from reproduce import readme_numbers as rn


def test_readme_block_is_what_the_committed_results_render():
    text = rn.README.read_text()
    assert rn.splice(text, rn.render()) == text, "run: python -m reproduce.readme_numbers --write"
    assert rn.render_all(text) == text
    assert rn.main(["--check"]) == 0


def test_block_carries_every_seed_of_every_csv_row():
    block = rn.render()
    for table in rn.TABLES:
        with open(rn.RESULTS / f"{table}.csv", newline="") as f:
            for row in csv.DictReader(f):
                for key in ("AP", "AP50"):
                    seeds = " / ".join(s.strip() for s in row[f"{key} seeds"].split(","))
                    assert f"{row[key]} ({seeds})" in block, (table, row["arm"], key)


def test_pairings_count_against_brute_force():
    a, b = [2.6, 1.9], [2.1, 1.3]
    higher = sum(1 for x in a for y in b if x > y)
    assert higher == 3
    assert rn.pairings(a, b) == "higher 3, lower 1 of 4"
    assert rn.pairings([1.0], [1.0]) == "higher 0, lower 0, equal 1 of 1"
    assert rn.pairings([6.5, 6.9], [6.5, 4.7]) == "higher 3, lower 0, equal 1 of 4"
    assert rn.pairings([], [1.0]) == "–"


@pytest.mark.parametrize("block", list(rn.BLOCKS))
def test_check_fails_when_a_committed_number_changes(tmp_path, block):
    results = tmp_path / "results"
    for name in rn.BLOCKS:
        shutil.copytree(rn.RESULTS_ROOT / name, results / name)
    readme = tmp_path / "README.md"
    shutil.copy(rn.README, readme)
    args = ["--results", str(results), "--readme", str(readme)]
    assert rn.main([*args, "--check"]) == 0
    t1 = results / block / "table1.csv"
    cell = rn.read_table(t1)[0]["AP seeds"]  # e.g. "6.6, 6.1, 7.0"
    first, rest = cell.split(", ", 1)
    changed = f"{float(first) + 0.1:.1f}, {rest}"
    t1.write_text(t1.read_text().replace(f'"{cell}"', f'"{changed}"', 1))
    assert rn.main([*args, "--check"]) == 1
    assert rn.main([*args, "--write"]) == 0
    start, end = rn.markers(block)
    text = readme.read_text()
    assert f"({changed.replace(', ', ' / ')})" in text[text.index(start) : text.index(end)]
    assert rn.main([*args, "--check"]) == 0


def test_bad_input_names_the_file(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert rn.main(["--readme", str(readme), "--check"]) == 2
    assert "README.md: no lite-results start/end marker pair" in capsys.readouterr().err
    with pytest.raises(rn.ReadmeNumbersError, match="table1.csv: missing"):
        rn.render(tmp_path)


def test_margin_is_the_gap_of_means_against_twice_the_larger_sd():
    a, b = [10.0, 12.0, 11.0], [5.0, 5.5, 6.0]
    gap = sum(a) / 3 - sum(b) / 3  # 5.5
    sd_a = (sum((x - 11.0) ** 2 for x in a) / 2) ** 0.5  # 1.0, the larger
    assert (
        rn.margin(a, b)
        == f"mean gap {gap:+.2f}, 2 x larger seed sd {2 * sd_a:.2f}: beyond seed noise"
    )
    assert rn.margin([1.0, 3.0], [0.0, 0.5]).endswith("within seed noise")  # gap 1.75 < 2.83
    assert rn.margin([1.0], [0.0, 0.5]) == "fewer than 2 seeds: no margin"
