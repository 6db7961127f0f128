"""Suite ``supersession``: a preference that changes over time leaves one active version.

Cases are scripted in ``personalign/eval/data/supersession_cases.json``, package data
(written for this project, not derived from the evaluation data). Each turn is ingested as its
own conversation with :func:`~personalign.memory.ingest.add_messages` and the embedded
extractor. A case succeeds when the preference from the changing turn is active, the old one is
superseded and in its history, and the unrelated preferences are still active. Target:
accuracy >= 0.95.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from personalign.backends.embedders import Embedder, load_embedder
from personalign.backends.stores.sqlite import SQLiteStore
from personalign.config import load_settings
from personalign.memory.extract import EmbeddedExtractor, Extractor
from personalign.memory.ingest import add_messages
from personalign.types import PREFERENCE_KINDS, Message

NEEDS_DATA = False
"""The cases ship with the package: no evaluation data folder needed."""
CASES = "supersession_cases.json"
"""The cases' file among the package data of :mod:`personalign.eval.data`."""


def load_cases(path: Path | None = None) -> list[dict[str, Any]]:
    """The scripted cases (see the module docstring); ``path``: another cases file."""
    source = path or resources.files("personalign.eval.data").joinpath(CASES)
    if not source.is_file():
        raise FileNotFoundError(f"missing {source}: the scripted supersession cases")
    cases: list[dict[str, Any]] = json.loads(source.read_text(encoding="utf-8"))["cases"]
    return cases


def check_case(store: SQLiteStore, extractor: Extractor, case: dict[str, Any], user: str) -> str:
    """Run one case; return ``"ok"`` or what went wrong."""
    ids = [f"{case['id']}:t{i}" for i in range(len(case["turns"]))]
    for tid, text in zip(ids, case["turns"], strict=True):
        add_messages(
            store, [Message(role="user", content=text, id=tid)], user=user, extractor=extractor
        )
    prefs = store.list(user=user, include_history=True, kinds=list(PREFERENCE_KINDS))

    def from_turn(i: int) -> list[Any]:
        return [p for p in prefs if ids[i] in p.source_turn_ids]

    new = [p for p in from_turn(case["new"]) if p.active]
    if not new:
        return "new_not_active"
    old = from_turn(case["old"])
    if not old:
        return "old_not_extracted"
    if any(p.active for p in old):
        return "old_still_active"
    history = {p.id for p in store.history(new[0].id, user=user)}
    if not all(p.id in history for p in old):
        return "old_not_in_history"
    for k in case.get("keep", []):
        kept = from_turn(k)
        if not kept or not any(p.active for p in kept):
            return "keep_lost"
    return "ok"


def measure(embedder: Embedder, cases: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy over ``cases`` and a count of each failure kind."""
    extractor = EmbeddedExtractor(embedder)
    outcomes: dict[str, int] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="personalign-supersession-") as tmp:
        store = SQLiteStore(Path(tmp) / "memory.db", embedder)
        try:
            for i, case in enumerate(cases):
                out = check_case(store, extractor, case, f"case{i}")
                outcomes[out] = outcomes.get(out, 0) + 1
        finally:
            store.close()
    n = len(cases)
    figures: dict[str, float] = {
        "supersession_accuracy": outcomes.get("ok", 0) / n if n else 0.0,
        "supersession_cases": float(n),
    }
    for name in (
        "new_not_active",
        "old_not_extracted",
        "old_still_active",
        "old_not_in_history",
        "keep_lost",
    ):
        figures[f"supersession_fail_{name}"] = float(outcomes.get(name, 0))
    figures["supersession_seconds"] = round(time.perf_counter() - t0, 2)
    return figures


def run(data_dir: Path | None, *, quick: bool) -> dict[str, float]:
    """The ``personalign eval`` entry point (``data_dir`` is unused: the cases ship here)."""
    cases = load_cases()
    if quick:
        cases = cases[:20]
    return measure(load_embedder("minilm", load_settings().cache_dir), cases)
