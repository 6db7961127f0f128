"""Per-user LoRA adapters for :class:`~personalign.backends.models.local.TransformersLM`:
where they live (:class:`AdapterSource`) and the LRU cache that swaps them in per request
(:class:`AdapterSwapping`, a mixin of the model class).

peft is imported lazily, on the first adapter load, so importing this module is cheap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from personalign.backends.models.embedded import _quiet_hf
from personalign.errors import BackendError, ModelNotAvailableError, ValidationError


class AdapterSource(Protocol):
    """Where named per-user adapters live (e.g. :class:`personalign.feedback.AdapterStore`)."""

    def adapter_path(self, name: str) -> Path:
        """The PEFT directory of adapter ``name``'s newest version (NotFoundError if none)."""
        ...


class AdapterSwapping:
    """Loads adapters with PEFT on first use into an LRU cache of ``max_adapters`` and swaps
    them in over the base model ``_model`` (set by the class this is mixed into)."""

    _model: Any

    def _init_adapters(self, adapters: AdapterSource | None, max_adapters: int) -> None:
        if max_adapters < 1:
            raise ValidationError(f"max_adapters must be >= 1, got {max_adapters}")
        self.adapters = adapters
        self.max_adapters = max_adapters
        self.last_swap_ms = 0.0
        self._peft: Any = None  # the PeftModel wrapping self._model once an adapter is loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter dir -> PEFT name, LRU
        self._active: str | None = None
        self._n_loaded = 0

    def activate_adapter(self, name: str | None) -> float:
        """Make adapter ``name`` (None: the base model) the one generation uses; return the
        milliseconds taken (a load from disk on a cache miss, else a switch)."""
        t0 = time.perf_counter()
        if name is None:
            if self._active is not None:
                self._peft.base_model.disable_adapter_layers()
                self._active = None
            return 0.0
        if self.adapters is None:
            raise BackendError(f"no adapter store configured: cannot apply adapter {name!r}")
        path = str(self.adapters.adapter_path(name))
        key = self._loaded.get(path)
        if key is None:
            key = f"adapter{self._n_loaded}"  # PEFT names cannot hold dots; user ids can
            self._n_loaded += 1
            try:
                with _quiet_hf():
                    if self._peft is None:
                        from peft import PeftModel

                        self._peft = PeftModel.from_pretrained(self._model, path, adapter_name=key)
                    else:
                        self._peft.load_adapter(path, adapter_name=key)
            except Exception as e:
                raise ModelNotAvailableError(
                    f"cannot load adapter {name!r} from {path}: {e}"
                ) from e
            self._peft.eval()
            self._loaded[path] = key
            self._active = None  # forces the switch below
        self._loaded.move_to_end(path)
        if self._active != key:
            self._peft.set_adapter(key)
            self._peft.base_model.enable_adapter_layers()
            self._active = key
        while len(self._loaded) > self.max_adapters:  # unload the least recently used
            self._peft.delete_adapter(self._loaded.popitem(last=False)[1])
        self.last_swap_ms = (time.perf_counter() - t0) * 1000
        return self.last_swap_ms

    def route_adapters(self, names: Sequence[str | None]) -> list[str] | None:
        """Activate the adapters rows ``names`` use (None: the base model) for one forward
        pass. One name for every row: it is made active and None is returned (a plain pass).
        Rows that differ: a mixed batch, PEFT's ``adapter_names`` (``"__base__"`` for the
        base model's rows), which is returned."""
        distinct = list(dict.fromkeys(names))
        if len(distinct) == 1:
            self.activate_adapter(distinct[0])
            return None
        named = [n for n in distinct if n is not None]
        if len(named) > self.max_adapters:
            raise ValidationError(
                f"{len(named)} adapters in one batch; at most max_adapters={self.max_adapters}"
            )
        keys: dict[str | None, str] = {None: "__base__"}
        for n in named:
            self.activate_adapter(n)
            assert self._active is not None
            keys[n] = self._active
        return [keys[n] for n in names]

    def unload_missing_adapters(self) -> int:
        """Unload every cached adapter whose directory is gone from disk (an erased user's);
        return how many were unloaded."""
        gone = [path for path in self._loaded if not Path(path).is_dir()]
        for path in gone:
            key = self._loaded.pop(path)
            if self._active == key:
                self._peft.base_model.disable_adapter_layers()
                self._active = None
            self._peft.delete_adapter(key)
        return len(gone)
