"""`python -m musicrec.indexer`: bad input exits 2 with one line; builds from each schema; eval prints figures."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from musicrec.index.artifacts import MANIFEST
from musicrec.indexer.cli import main
from tests.fixtures_artifacts import REPO, require_real_csv

HEADER = "track_id,artists,album_name,track_name,popularity,explicit,danceability,energy,valence,tempo,track_genre\n"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("empty.csv", "", "empty"),
        ("header_only.csv", HEADER, "no data rows"),
        ("no_id.csv", "name,danceability,energy,tempo\nx,0.1,0.2,100\n", "id"),
        ("bad_value.csv", HEADER + "a1,A,Al,T,5,FALSE,0.5,0.6,0.1,120,pop\na2,B,Bl,U,5,FALSE,0.5,high,0.1,120,pop\n",
         "column 'energy', row 2"),
        ("two_features.csv", "id,danceability,energy\na,0.1,0.2\n", "feature"),
        # One absurd value used to build fine (exit 0) with that feature zeroed for the whole catalog.
        ("absurd.csv", HEADER + "".join(f"a{i},A,Al,T,5,FALSE,{'1e308' if i == 7 else '0.5'},0.6,0.1,120,pop\n"
                                        for i in range(20)), "column 'danceability', row 8: value 1e+308 outside"),
        # Too few tracks to train on is the file's fault: exit 2, not the training failure's 1.
        ("two_rows.csv", HEADER + "a1,A,Al,T,5,FALSE,0.5,0.6,0.1,120,pop\na2,B,Bl,U,5,FALSE,0.4,0.7,0.2,121,pop\n",
         "only 2 track(s) after cleaning; a build needs at least 10"),
        ("dup_header.csv", HEADER.strip() + ",energy\n" + "a1,A,Al,T,5,FALSE,0.5,0.6,0.1,120,pop,0.9\n",
         "duplicate column 'energy'"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".csv") else "",
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, name: str, content: str, expect: str) -> None:
    csv = tmp_path / name
    csv.write_text(content)
    code, _, err = _run(["build", "--csv", str(csv), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert name in lines[0] and expect.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["build", "--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and "nope.csv" in err and len(err.strip().splitlines()) == 1


def test_cli_is_a_real_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "musicrec.indexer", "build", "--csv", str(tmp_path / "x.csv"), "--quiet"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "x.csv" in proc.stderr


def test_seed_schema_with_four_features_builds(tmp_path: Path, capsys) -> None:
    rows = ["id,track_name,artist_name,genre,danceability,energy,valence,tempo"]
    for i in range(120):
        rows.append(f"t{i},Song {i},Artist {i % 7},{['pop', 'rock', 'jazz'][i % 3]},"
                    f"{(i * 7 % 100) / 100},{(i * 13 % 100) / 100},{(i * 29 % 100) / 100},{80 + i % 90}")
    csv = tmp_path / "seed.csv.gz"
    with gzip.open(csv, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    code, out, _ = _run(["build", "--csv", str(csv), "--out", str(tmp_path / "v"), "--epochs", "2", "--quiet"], capsys)
    assert code == 0, out
    manifest = json.loads((tmp_path / "v" / MANIFEST).read_text())
    assert manifest["features"] == ["danceability", "energy", "valence", "tempo"]
    assert "loudness" in manifest["missing_features"] and manifest["n_tracks"] == 120 and manifest["demo"] is False
    assert "genre agreement@10" in out


def test_eval_prints_the_quality_figures(demo_artifacts: Path, capsys) -> None:
    code, out, _ = _run(["eval", "--artifacts", str(demo_artifacts), "--sample", "300"], capsys)
    assert code == 0
    assert "genre agreement@10: embedding" in out and "ANN recall@20 vs exact: 1.0000" in out


@pytest.mark.real_data
@pytest.mark.slow
def test_full_build_on_the_114k_catalog(real_artifacts: Path) -> None:
    require_real_csv()
    manifest = json.loads((real_artifacts / MANIFEST).read_text())
    assert manifest["n_tracks"] == 89_741 and manifest["dim"] == 32 and manifest["demo"] is False
    assert manifest["source"]["sha256"] and manifest["source"]["rows"] == 114_000
    assert manifest["val_loss"] < 0.05
    assert manifest["build_seconds"] < 180
    # The embedding must not lose what the raw features know about genre.
    metrics = manifest["metrics"]
    assert metrics["genre_agreement@10_embedding"] >= 0.9 * metrics["genre_agreement@10_raw"]


def test_build_output_is_one_line_per_step_around_the_bar_and_a_summary_that_explains(tmp_path: Path) -> None:
    """Run as a person would (progress on): every step announces itself, no log line is written into the
    training bar, and the summary says what each quality figure means and what a good value is."""
    proc = subprocess.run([sys.executable, "-m", "musicrec", "build", "--demo", "400", "--epochs", "3",
                           "--root", str(tmp_path / "art")], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"step (\d)/(\d) (\S+): ", proc.stderr)
    assert [name for *_, name in steps] == ["train", "embed", "index", "neighbours", "evaluate", "write", "check"]
    assert all(total == "7" for _, total, _ in steps) and [int(i) for i, *_ in steps] == list(range(1, 8))
    assert "training" in proc.stderr  # the bar was drawn
    for line in proc.stderr.split("\n"):
        visible = line.rsplit("\r", 1)[-1].strip()  # what a terminal shows once the bar has redrawn
        assert not visible or re.match(r"\d{4}-\d\d-\d\d |training", visible), repr(line)
        assert not ("training:" in visible and " INFO " in visible), repr(line)
    assert "epoch 1/3" not in proc.stderr  # per-epoch losses live in the bar's postfix, not in lines that break it
    out = proc.stdout
    assert "higher is better" in out and "good:" in out and "1.0 = no better than the mean" in out
    assert re.search(r"seconds per step: train \d+\.\d, embed \d+\.\d, index", out)
