"""Per-user LoRA adapters on the filesystem ("One PEFT Per User").

Layout under ``root`` (by default ``<home>/adapters``)::

    <root>/<name>/<version>/adapter_model.safetensors   # PEFT's files, as vLLM loads them
    <root>/<name>/<version>/adapter_config.json
    <root>/<name>/<version>/recipe.json                 # user, base model, data hash, config

``name`` is :func:`adapter_name` of the user id (the id itself, a leading dot escaped) and is
also the name the model backends take in ``GenerationOptions.adapter``; ``version`` is
``v0001``, ``v0002``, ... A version is written to a temporary directory and renamed into place,
so a crash never leaves half an adapter. :meth:`AdapterStore.adapter_path` resolves a name to
the newest version (the local backend's hook; it keeps an LRU cache of loaded adapters).

A version the safety check rejected (:mod:`personalign.safety.adapter_check`; its verdict is
the recipe's ``safety_check``) stays on disk but never serves: :meth:`AdapterStore.latest`
(and so ``adapter_path``, the pipeline and the vLLM export) returns None for the user until a
newer version passes, and the base model answers.

Serving many users from one GPU: :meth:`AdapterStore.export_vllm` writes one directory per
user in the layout vLLM loads (``--lora-modules name=path``, or on demand through its
filesystem LoRA resolver); the OpenAI-compatible backend then selects a user's adapter by
sending its name as the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalign.errors import NotFoundError, ValidationError
from personalign.types import check_user, utcnow

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
RECIPE_FILE = "recipe.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


def adapter_name(user: str) -> str:
    """The adapter (and directory) name of a user: the id, with a leading ``.`` as ``%2E``."""
    check_user(user)
    return "%2E" + user[1:] if user.startswith(".") else user


def user_of(name: str) -> str:
    """The user id of an adapter name (inverse of :func:`adapter_name`)."""
    return "." + name[3:] if name.startswith("%2E") else name


@dataclass(frozen=True)
class AdapterInfo:
    """One stored adapter version."""

    user: str
    version: int
    path: Path
    recipe: dict[str, Any]

    @property
    def name(self) -> str:
        return adapter_name(self.user)

    @property
    def label(self) -> str:
        """``<name>@v0003``: the name and version, for logs and ``/why``."""
        return f"{self.name}@v{self.version:04d}"

    @property
    def check(self) -> dict[str, Any] | None:
        """The safety check's verdict (:mod:`personalign.safety.adapter_check`), or None when
        the version was never checked (saved before the check existed, or by hand)."""
        c = self.recipe.get("safety_check")
        return c if isinstance(c, dict) else None

    @property
    def rejected(self) -> bool:
        """Whether the safety check rejected this version: it is kept on disk, never served."""
        return self.check is not None and self.check.get("passed") is False

    @property
    def status(self) -> str:
        """``rejected``, ``passed``, ``unchecked`` (disabled on purpose) or ``not checked``."""
        c = self.check
        if c is None:
            return "not checked"
        if c.get("enabled") is False:
            return "unchecked"
        return "rejected" if c.get("passed") is False else "passed"

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class AdapterStore:
    """Per-user adapter versions on disk (see the module doc). Safe across processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @classmethod
    def for_home(cls, home: str | Path) -> AdapterStore:
        """The store under a data directory: ``<home>/adapters``."""
        return cls(Path(home).expanduser() / "adapters")

    def _user_dir(self, user: str) -> Path:
        return self.root / adapter_name(user)

    def _complete(self, user: str) -> list[tuple[int, Path]]:
        """(version, directory) of every complete version, oldest first."""
        base = self._user_dir(user)
        if not base.is_dir():
            return []
        out = []
        for d in base.iterdir():
            m = _VERSION_RE.match(d.name)
            if m and all((d / f).is_file() for f in (*ADAPTER_FILES, RECIPE_FILE)):
                out.append((int(m.group(1)), d))
        return sorted(out)

    def _info(self, user: str, version: int, path: Path) -> AdapterInfo:
        return AdapterInfo(user, version, path, json.loads((path / RECIPE_FILE).read_text()))

    def versions(self, user: str) -> list[AdapterInfo]:
        """Every complete version of the user's adapter, oldest first."""
        return [self._info(user, v, d) for v, d in self._complete(user)]

    def newest(self, user: str) -> AdapterInfo | None:
        """The newest version, served or not, or None when the user has no adapter."""
        done = self._complete(user)
        return self._info(user, *done[-1]) if done else None

    def latest(self, user: str) -> AdapterInfo | None:
        """The version that serves: the newest one, unless the safety check rejected it (then
        None: the base model serves until a newer version passes); None when the user has no
        adapter. Reads one recipe: this runs on every request of the pipeline."""
        info = self.newest(user)
        return None if info is None or info.rejected else info

    def rejected(self, user: str) -> AdapterInfo | None:
        """The newest version when the safety check rejected it (what ``/why`` and the
        user's adapter listing report), else None."""
        info = self.newest(user)
        return info if info is not None and info.rejected else None

    def rejected_meta(self, user: str) -> dict[str, object]:
        """The exchange's meta about a rejected adapter (``{}`` when none was rejected)."""
        info = self.rejected(user)
        if info is None:
            return {}
        c = info.check or {}
        keys = ("base_rate", "adapter_rate", "margin", "probes")
        return {"adapter_rejected": {"adapter": info.label, **{k: c.get(k) for k in keys}}}

    def listing(self, user: str) -> list[dict[str, Any]]:
        """Each version of ``user``'s adapter, oldest first, for the user and the operator:
        its label, creation time, whether it is the one that serves, and the safety check's
        status (:attr:`AdapterInfo.status`) and verdict."""
        serving = self.latest(user)
        return [
            {
                "adapter": a.label,
                "created_at": str(a.recipe.get("created_at", "")),
                "serves": serving is not None and a.version == serving.version,
                "check": a.status,
                "safety_check": a.check,
            }
            for a in self.versions(user)
        ]

    def find(self, user: str, data_hash: str) -> AdapterInfo | None:
        """The newest version trained on data with this hash (for resuming), or None."""
        for a in reversed(self.versions(user)):
            if a.recipe.get("data_hash") == data_hash:
                return a
        return None

    def users(self) -> list[str]:
        """Every user with at least one adapter, sorted."""
        if not self.root.is_dir():
            return []
        names = [d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return sorted(u for u in map(user_of, names) if self._complete(u))

    def adapter_path(self, name: str) -> Path:
        """The directory of the newest version of adapter ``name`` (a user's adapter name);
        :class:`NotFoundError` when there is none."""
        info = self.latest(user_of(name))
        if info is None:
            raise NotFoundError(f"no adapter named {name!r} in {self.root}")
        return info.path

    def save(self, user: str, files: Mapping[str, bytes], recipe: Mapping[str, Any]) -> AdapterInfo:
        """Write a new version from the adapter ``files`` (name -> bytes) and ``recipe``."""
        missing = [f for f in ADAPTER_FILES if f not in files]
        if missing:
            raise ValidationError(f"adapter files missing: {', '.join(missing)}")
        base = self._user_dir(user)
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for fname in ADAPTER_FILES:
                (tmp / fname).write_bytes(files[fname])
            while True:
                latest = self.newest(user)
                version = (latest.version if latest else 0) + 1
                full = {
                    **recipe,
                    "user": user,
                    "version": version,
                    "created_at": utcnow().isoformat(),
                }
                (tmp / RECIPE_FILE).write_text(json.dumps(full, indent=2, default=str))
                target = base / f"v{version:04d}"
                try:
                    tmp.rename(target)  # atomic; fails if another process took this version
                    return AdapterInfo(user, version, target, full)
                except OSError:
                    if not target.exists():
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_dir(self, user: str, src: Path, recipe: Mapping[str, Any]) -> AdapterInfo:
        """Like :meth:`save`, from a directory PEFT's ``save_pretrained`` wrote."""
        return self.save(user, {f: (Path(src) / f).read_bytes() for f in ADAPTER_FILES}, recipe)

    def erase(self, user: str) -> int:
        """Delete every version of the user's adapter; returns how many there were."""
        n = len(self.versions(user))
        shutil.rmtree(self._user_dir(user), ignore_errors=True)
        return n

    def export_vllm(
        self,
        dest: str | Path,
        *,
        base_model: str,
        users: Sequence[str] | None = None,
        copy: bool = False,
    ) -> dict[str, Any]:
        """Lay out the newest adapter of each user for vLLM multi-LoRA serving.

        Writes ``<dest>/<name>/`` (symlinks to the files, or copies with ``copy``) with
        ``adapter_config.json``'s ``base_model_name_or_path`` set to ``base_model`` (the model
        name vLLM serves; its filesystem resolver checks it), plus ``<dest>/lora_modules.txt``
        (one ``name=path`` per line, for ``--lora-modules``) and ``<dest>/manifest.json``.
        Serve with ``vllm serve BASE --enable-lora --max-lora-rank R`` and either
        ``--lora-modules $(cat lora_modules.txt)`` or, for thousands of users, on demand:
        ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true VLLM_PLUGINS=lora_filesystem_resolver
        VLLM_LORA_RESOLVER_CACHE_DIR=<dest>``. Returns the manifest.
        """
        dest = Path(dest).expanduser()
        dest.mkdir(parents=True, exist_ok=True)
        entries = []
        for user in users if users is not None else self.users():
            info = self.latest(user)
            if info is None and users is None:
                continue  # its newest version was rejected by the safety check
            if info is None:
                raise NotFoundError(f"user {user!r} has no adapter to export (or it was rejected)")
            out = dest / info.name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            weights = info.path / ADAPTER_FILES[0]
            if copy:
                shutil.copy2(weights, out / ADAPTER_FILES[0])
            else:
                (out / ADAPTER_FILES[0]).symlink_to(weights.resolve())
            config = json.loads((info.path / ADAPTER_FILES[1]).read_text())
            config["base_model_name_or_path"] = base_model
            (out / ADAPTER_FILES[1]).write_text(json.dumps(config, indent=2))
            entries.append(
                {"name": info.name, "user": user, "version": info.version, "path": str(out)}
            )
        manifest = {"base_model": base_model, "adapters": entries}
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (dest / "lora_modules.txt").write_text(
            "".join(f"{e['name']}={e['path']}\n" for e in entries)
        )
        return manifest
