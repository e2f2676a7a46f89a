"""The README's lite numbers are the committed results', rendered, never typed."""

import csv
import shutil

import pytest

from reproduce import readme_numbers as rn


def test_readme_block_is_what_the_committed_results_render():
    text = rn.README.read_text()
    assert rn.splice(text, rn.render()) == text, "run: python -m reproduce.readme_numbers --write"
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
    assert rn.pairings([1.0], [1.0]) == "higher 0, lower 0 of 1"
    assert rn.pairings([], [1.0]) == "–"


def test_check_fails_when_a_committed_number_changes(tmp_path):
    results = tmp_path / "lite"
    shutil.copytree(rn.RESULTS, results)
    readme = tmp_path / "README.md"
    shutil.copy(rn.README, readme)
    assert rn.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    t1 = results / "table1.csv"
    t1.write_text(t1.read_text().replace('"0.8, 1.1"', '"0.8, 1.2"', 1))
    assert rn.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert rn.main(["--results", str(results), "--readme", str(readme), "--write"]) == 0
    assert "(0.8 / 1.2)" in readme.read_text()
    assert rn.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0


def test_bad_input_names_the_file(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert rn.main(["--readme", str(readme), "--check"]) == 2
    assert "README.md: no lite-results start/end marker pair" in capsys.readouterr().err
    with pytest.raises(rn.ReadmeNumbersError, match="table1.csv: missing"):
        rn.render(tmp_path)
