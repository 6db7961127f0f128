"""benchmarks/depths.py: its judge, users and data contract (the figures need trained experts
and minutes of decoding; the README quotes them with the command)."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import depths  # noqa: E402


def test_the_prompts_are_held_out_from_every_training_prompt() -> None:
    from personalign.training.experts import packaged_prompts

    prompts = depths.load_prompts(depths.PROMPTS, 100)
    assert len(set(prompts)) == 100
    training = packaged_prompts()
    assert not set(prompts) & set(training)
    close = [
        (p, t)
        for p in prompts
        for t in training
        if difflib.SequenceMatcher(None, p.lower(), t.lower()).ratio() > 0.85
    ]
    assert not close  # no rewording of a training prompt either


def test_the_user_score_rewards_the_chosen_pole() -> None:
    short = "Water it daily."
    long = " ".join(["Water it daily and keep it somewhere warm with plenty of light."] * 12)
    listed = "- water\n- light\n- warmth\n- drainage\n- pruning\n- feeding"
    assert depths.user_score(short, {"conciseness": 1.0}) > depths.user_score(
        long, {"conciseness": 1.0}
    )
    assert depths.user_score(long, {"conciseness": -1.0}) > depths.user_score(
        short, {"conciseness": -1.0}
    )
    assert depths.user_score(listed, {"structure": 0.5}) == 1.0
    casual = "It's great, you'll love it, don't worry, it's easy."
    assert depths.user_score(casual, {"formality": -1.0}) > depths.user_score(
        "It is straightforward.", {"formality": -1.0}
    )
    with pytest.raises(ValueError):
        depths.user_score(short, {})


def test_users_are_seeded_and_lean_on_two_or_three_dimensions() -> None:
    dims = ("conciseness", "structure", "formality")
    users = depths.make_users(20, dims, seed=3)
    assert users == depths.make_users(20, dims, seed=3)
    assert all(2 <= len(u) <= 3 and set(u) <= set(dims) for u in users)
    assert all(0.4 <= abs(w) <= 1.0 for u in users for w in u.values())
    assert depths.poles({"conciseness": -0.5, "structure": 0.7}) == {
        "conciseness-": 0.5,
        "structure+": 0.7,
    }


def test_pareto_front_keeps_the_undominated_points() -> None:
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.9, 0.05)]
    assert depths.pareto_front(points) == [0, 1, 3]


def test_missing_experts_is_an_error_not_a_figure(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "depths.py"), "--experts", str(tmp_path / "none"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "personalign train experts" in out.stderr
    assert not out.stdout.strip() or "weighted_gain" not in out.stdout
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps({"prompts": []}))
    with pytest.raises(SystemExit, match="holds no prompt"):
        depths.load_prompts(bad, 1)
