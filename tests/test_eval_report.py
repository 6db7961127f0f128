from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.eval import suites
from personalign.eval.bench import percentile
from personalign.eval.report import run_suites


@pytest.fixture
def tiny_suite(tmp_path, monkeypatch):
    mod = tmp_path / "tiny_suite_mod.py"
    mod.write_text(
        '"""A tiny suite for tests."""\n'
        "def run(data_dir, *, quick):\n"
        "    return {'recall_at5': 0.5 if quick else 0.75, 'search_p95_ms': 3.0}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(suites.SUITES, "tiny", "tiny_suite_mod")
    yield "tiny"
    sys.modules.pop("tiny_suite_mod", None)


def test_report_has_figures_and_png_plots(tmp_path, tiny_suite):
    out = tmp_path / "results"
    report = run_suites([tiny_suite], data_dir=tmp_path, out_dir=out, quick=True)
    text = report.read_text()
    assert "## tiny" in text and "`recall_at5` | 0.5" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["tiny_latency_ms.png", "tiny_rates.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert json.loads((out / "figures.json").read_text()) == {
        "tiny": {"recall_at5": 0.5, "search_p95_ms": 3.0}
    }


def test_eval_command(tmp_path, tiny_suite):
    r = CliRunner().invoke(
        app, ["eval", tiny_suite, "--out", str(tmp_path / "r"), "--data", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "report.md").exists()
    r = CliRunner().invoke(app, ["eval", "nope"])
    assert r.exit_code == 1 and "unknown suite 'nope'" in r.output


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 95) == pytest.approx(9.5)


def test_a_suite_that_needs_data_names_the_setting(tmp_path, tiny_suite):
    from personalign.errors import ConfigError

    with pytest.raises(ConfigError, match="PERSONALIGN_EVAL_DATA"):
        run_suites([tiny_suite], data_dir=None, out_dir=tmp_path / "r", quick=True)
    with pytest.raises(ConfigError, match="is not a folder"):
        run_suites([tiny_suite], data_dir=tmp_path / "nope", out_dir=tmp_path / "r", quick=True)
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_packaged_suite_runs_without_data(tmp_path, tiny_suite):
    sys.modules.pop("tiny_suite_mod", None)
    mod = tmp_path / "tiny_suite_mod.py"
    mod.write_text(mod.read_text() + "NEEDS_DATA = False\n")
    report = run_suites([tiny_suite], data_dir=None, out_dir=tmp_path / "r", quick=True)
    assert "data: `packaged only`" in report.read_text()


def test_eval_data_dir_order(tmp_path):
    from personalign.config import load_settings
    from personalign.eval.bench import DEFAULT_DATA, eval_data_dir

    assert eval_data_dir(tmp_path / "a", tmp_path / "b") == tmp_path / "a"
    assert eval_data_dir(None, tmp_path / "b") == tmp_path / "b"
    # a source checkout: its ../shared/data when present
    assert eval_data_dir() == (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    settings = load_settings(home=tmp_path, eval_data="~/somewhere")
    assert settings.eval_data == Path("~/somewhere").expanduser()


def test_packaged_supersession_cases_load():
    from personalign.eval.suites import supersession

    cases = supersession.load_cases()
    assert len(cases) >= 20 and all({"turns", "old", "new"} <= set(c) for c in cases)
    assert supersession.NEEDS_DATA is False
