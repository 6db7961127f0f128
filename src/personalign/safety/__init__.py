"""The safety boundary: admission checks for preferences, injection defence, the policy.

Quick use::

    from personalign.backends.embedders import load_embedder
    from personalign.safety import load_boundary, render_memories_block

    boundary = load_boundary(load_embedder("minilm", cache_dir))
    verdict = boundary.check(["I like dark humour"])[0]   # Verdict(admitted=True, ...)
    block = render_memories_block(records)                # quoted data block for the prompt
"""

from personalign.safety.checkers import (
    DEFAULT_ARTIFACT,
    Boundary,
    Checker,
    ClassifierChecker,
    PatternChecker,
    artifact_info,
    load_boundary,
)
from personalign.safety.guard import (
    OpenAIGuardChecker,
    build_guard_prompt,
    guard_from_settings,
    parse_guard_output,
)
from personalign.safety.injection import (
    BLOCK_CLOSE,
    BLOCK_OPEN,
    INJECTION_FLAG,
    InjectionDetector,
    InjectionResult,
    neutralize,
    render_memories_block,
)
from personalign.safety.policy import Category, Policy, load_policy
from personalign.safety.verdict import Verdict

__all__ = [
    "BLOCK_CLOSE",
    "BLOCK_OPEN",
    "DEFAULT_ARTIFACT",
    "INJECTION_FLAG",
    "Boundary",
    "Category",
    "Checker",
    "ClassifierChecker",
    "InjectionDetector",
    "InjectionResult",
    "OpenAIGuardChecker",
    "PatternChecker",
    "Policy",
    "Verdict",
    "artifact_info",
    "build_guard_prompt",
    "guard_from_settings",
    "load_boundary",
    "load_policy",
    "neutralize",
    "parse_guard_output",
    "render_memories_block",
]
