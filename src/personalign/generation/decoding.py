"""Decoding-time personalization: pure next-token rules, one decoding loop, reward search.

A *rule* turns the next-token logits of R contexts decoded side by side (one KV-cached batch,
every row extended with the same chosen token) into one row of scores; :func:`decode` is the
loop, nanoGPT-``generate()`` style::

    logits, state = lm.forward(prompts)                  # (R, V): one row per context
    for _ in range(max_new_tokens):
        scores = rule(logits)                            # (V,)
        token = pick_token(scores, options, rng)
        if token in lm.eos_token_ids: break
        logits, state = lm.forward([[token]] * R, state)

Methods (:data:`DecodingMethod`), each with a ``strength``:

* ``prompt`` — the personal context alone (the preference in the prompt); strength unused.
* ``contrastive`` — Linear Alignment's contrastive amplification: rows (personal, plain),
  ``log p_with + alpha * (log p_with - log p_without)``, ``alpha = strength``; 0 is ``prompt``.
* ``mod`` — multi-objective decoding: K contexts (objectives), ``sum_k w_k log p_k`` with the
  user's weights normalized by :func:`~personalign.rewards.weights.normalize_weights` (floors
  for fixed objectives), then amplified away from the plain context by ``strength`` as above.
* ``best_of_n`` — ``n`` sampled replies to the personal context in one batch
  (``generate_batch``), the one the reward model scores highest wins; strength unused. Needs
  only generation, so it works on every backend.
* ``reward_guided`` — ARGS / PAD style: every ``every`` tokens, the ``top_k`` next tokens are
  each rolled out ``every`` tokens (one batch of ``top_k`` rows) and the chunk maximizing
  ``mean log p + strength * reward`` is kept.

The token-level methods need a backend with logits (``lm.supports_logits``); others raise
:class:`~personalign.errors.BackendError`.

A per-user adapter (``GenerationOptions.adapter``) composes with every method. The rows that
decode a personalized context run the adapted model: contrastive's personal row, MOD's
objective rows, every reward-guided rollout, every best-of-N candidate (and its plain
baseline reply, sampled in the same batch), and ``prompt``. The *plain* row of contrastive and
MOD runs the base model: it is what the personalization is amplified against, and the adapter
is part of the personalization. Adapted and base rows share one forward pass (a mixed batch,
``forward(..., adapter=[...])``); the constraints (``ban``) apply to the mixed scores as before.

Activation steering (``GenerationOptions.steering``, :mod:`personalign.generation.steering`)
composes the same way and on the same rows as the adapter: the personalized rows (contrastive's
personal row, MOD's objective rows, reward-guided rollouts, best-of-N candidates and their
baseline, ``prompt``) run steered, the plain row of contrastive and MOD runs unsteered, in the
same forward pass (``forward(..., steering=[...])``, per row). Steering and an adapter together
steer the adapted model. Backends without steering raise :class:`BackendError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from personalign.backends.models.base import (
    Context,
    Generation,
    GenerationOptions,
    LanguageModel,
    Steering,
    find_stop,
    stream_safe_len,
)
from personalign.errors import BackendError, ValidationError
from personalign.rewards.weights import normalize_weights
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.rewards.preference_rm import PreferenceRewardModel

DecodingMethod = Literal["prompt", "contrastive", "mod", "best_of_n", "reward_guided"]
DECODING_METHODS: tuple[DecodingMethod, ...] = get_args(DecodingMethod)
LogitMethod = Literal["prompt", "contrastive", "mod"]
"""The methods that are a pure rule over next-token logits."""

Rule = Callable[[np.ndarray], np.ndarray]
"""Next-token logits of the R rows ``(R, V)`` -> one row of scores ``(V,)``."""
Scorer = Callable[[Sequence[str]], np.ndarray]
"""Replies -> rewards ``(len(replies),)``, higher is better."""
UNDECIDED_REWARD = 0.5
"""The reward given to a reply the reward model could not score (an LLM judge's unreadable
verdict): between a violation (0) and compliance (1)."""

BEST_OF_N_TEMPERATURE = 0.8
"""Sampling temperature of best-of-N candidates when the request itself is greedy."""


# -- pure functions over logits ----------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Normalized log-probabilities along the last axis; same shape, float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def contrastive(logits_with: np.ndarray, logits_without: np.ndarray, alpha: float) -> np.ndarray:
    """Contrastive amplification (V,), (V,) -> (V,): ``lp_w + alpha * (lp_w - lp_wo)``.

    ``lp`` are log-softmaxed rows; ``alpha = 0`` returns the with-preference distribution.
    """
    lp_with = log_softmax(logits_with)  # (V,)
    lp_without = log_softmax(logits_without)  # (V,)
    return lp_with + alpha * (lp_with - lp_without)


def mod_mix(logits_k: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-objective mix (K, V), (K,) -> (V,): ``sum_k w_k * log_softmax(logits_k)``."""
    lp = log_softmax(logits_k)  # (K, V)
    w = np.asarray(weights, dtype=np.float64)  # (K,)
    if lp.ndim != 2 or w.shape != (lp.shape[0],):
        raise ValidationError(f"mod_mix: logits {lp.shape} and weights {w.shape} disagree")
    return w @ lp  # (V,)


def prompt_rule(logits: np.ndarray, weights: np.ndarray, strength: float) -> np.ndarray:
    """Rows (personal,) -> its log-probabilities."""
    return log_softmax(logits[0])


def contrastive_rule(logits: np.ndarray, weights: np.ndarray, strength: float) -> np.ndarray:
    """Rows (personal, plain) -> :func:`contrastive` with ``alpha = strength``."""
    return contrastive(logits[0], logits[1], strength)


def mod_rule(logits: np.ndarray, weights: np.ndarray, strength: float) -> np.ndarray:
    """Rows (objective_1..K[, plain]) -> :func:`mod_mix` of the K objectives with ``weights``,
    amplified by ``strength`` against the plain row when there is one (K + 1 rows)."""
    k = len(weights)
    mixed = mod_mix(logits[:k], weights)  # (V,)
    if logits.shape[0] == k:
        return mixed
    lp_plain = log_softmax(logits[k])
    return mixed + strength * (mixed - lp_plain)


RULES: Mapping[LogitMethod, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "prompt": prompt_rule,
    "contrastive": contrastive_rule,
    "mod": mod_rule,
}
"""Each logit method's rule ``(logits (R, V), weights (K,), strength) -> scores (V,)``."""


def make_rule(method: LogitMethod, *, strength: float, weights: Sequence[float] = ()) -> Rule:
    """The :data:`Rule` of ``method`` with its parameters bound."""
    if method not in RULES:
        raise ValidationError(f"no logit rule for {method!r}: use one of {tuple(RULES)}")
    fn, w = RULES[method], np.asarray(weights, dtype=np.float64)

    def rule(logits: np.ndarray) -> np.ndarray:
        return fn(logits, w, strength)

    return rule


def pick_token(scores: np.ndarray, options: GenerationOptions, rng: np.random.Generator) -> int:
    """Greedy argmax, or a sample at ``options.temperature`` within nucleus ``top_p``."""
    if options.greedy:
        return int(np.argmax(scores))
    lp = log_softmax(np.asarray(scores, dtype=np.float64) / options.temperature)  # (V,)
    probs = np.exp(lp)
    if options.top_p < 1.0:
        order = np.argsort(-probs)
        before = np.cumsum(probs[order]) - probs[order]  # mass of strictly better tokens
        keep = order[before < options.top_p]  # always keeps the top token
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept
    return int(rng.choice(len(probs), p=probs / probs.sum()))


# -- the decoding loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """One decoded reply. ``rows``: contexts decoded side by side; ``prompt_tokens``: summed
    over rows; ``finish_reason``: ``stop`` (end of turn or stop string) or ``length``."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    seconds: float
    rows: int


def _budget(lm: LanguageModel, prompts: Sequence[Sequence[int]], max_new: int) -> int:
    limit = getattr(lm, "max_length", None)
    longest = max(len(p) for p in prompts)
    budget = max_new if not isinstance(limit, int) else min(max_new, limit - longest)
    if budget <= 0:
        raise ValidationError(f"prompt is {longest} tokens; the model's limit is {limit}")
    return budget


def ban(
    lm: LanguageModel,
    options: GenerationOptions,
    histories: Sequence[Sequence[int]],
    scores: np.ndarray,
) -> np.ndarray:
    """``scores`` (R, V) with the tokens ``options`` bans (characters, words, tokens leaving
    its JSON Schema) at -inf, by the
    backend's ``constrain_logits`` (R histories: each row's prompt and reply so far)."""
    constrain = getattr(lm, "constrain_logits", None)
    if constrain is None or not options.constrained:
        return scores
    return np.asarray(constrain(options, histories, np.asarray(scores, dtype=np.float32)))


def require_logits(lm: LanguageModel, method: str) -> None:
    """Raise :class:`BackendError` unless ``lm`` exposes next-token logits."""
    if not lm.supports_logits:
        raise BackendError(
            f"decoding method {method!r} needs next-token logits, which the "
            f"{type(lm).__name__} backend does not expose: use 'best_of_n' or 'prompt'"
        )


def decode(
    lm: LanguageModel,
    contexts: Sequence[Context],
    rule: Rule,
    options: GenerationOptions,
    *,
    on_delta: Callable[[str], None] | None = None,
    adapters: Sequence[str | None] | None = None,
    steering: Sequence[Steering] | None = None,
) -> Decoded:
    """Decode one reply from ``contexts`` (R rows, one KV-cached batch) mixed by ``rule``.

    Every row is extended with the same chosen token. ``on_delta`` receives the text as it
    grows (a trailing partial stop string is held back). ``adapters``: the adapter of each
    row (None: the base model); by default ``options.adapter`` for every row. ``steering``:
    each row's steering (``()``: none); by default ``options.steering`` for every row.
    """
    require_logits(lm, "decode")
    if not contexts:
        raise ValidationError("decode needs at least one context")
    rows = list(adapters) if adapters is not None else [options.adapter] * len(contexts)
    if len(rows) != len(contexts):
        raise ValidationError(f"{len(rows)} adapters for {len(contexts)} contexts")
    steer = list(steering) if steering is not None else [options.steering] * len(contexts)
    if len(steer) != len(contexts):
        raise ValidationError(f"{len(steer)} steering specs for {len(contexts)} contexts")
    if any(steer) and not lm.supports_steering:
        raise BackendError(
            f"activation steering is not supported by the {type(lm).__name__} backend "
            "(or no steering vectors are set)"
        )
    kw: dict[str, Any] = {"steering": steer} if any(steer) else {}
    start = time.perf_counter()
    prompts = [lm.encode_context(c) for c in contexts]
    budget = _budget(lm, prompts, options.max_new_tokens)
    rng = np.random.default_rng(options.seed)
    eos = lm.eos_token_ids
    ids: list[int] = []
    text, sent, reason = "", 0, "length"
    logits, state = lm.forward(prompts, adapter=rows, **kw)  # (R, V)
    for _ in range(budget):
        scores = ban(lm, options, [prompts[0] + ids], rule(logits)[None])[0]  # (V,)
        token = pick_token(scores, options, rng)
        if token in eos:
            reason = "stop"
            break
        ids.append(token)
        if options.stop or on_delta is not None:
            text = lm.decode(ids)
            cut = find_stop(text, options.stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                break
            if on_delta is not None:
                upto = stream_safe_len(text, options.stop)
                if upto > sent:
                    on_delta(text[sent:upto])
                    sent = upto
        if len(ids) == budget:
            break
        logits, state = lm.forward([[token]] * len(prompts), state, adapter=rows, **kw)
    if not options.stop and on_delta is None:
        text = lm.decode(ids)
    if on_delta is not None and len(text) > sent:
        on_delta(text[sent:])
    seconds = time.perf_counter() - start
    return Decoded(text, ids, sum(map(len, prompts)), reason, seconds, len(prompts))


# -- reward-based methods ----------------------------------------------------------------------


def best_of_n(
    lm: LanguageModel,
    messages: Sequence[Message],
    score: Scorer,
    *,
    n: int,
    options: GenerationOptions,
) -> tuple[Generation, np.ndarray]:
    """Sample ``n`` replies in one batch and return the best by ``score`` and all rewards (n,).

    A greedy request samples at :data:`BEST_OF_N_TEMPERATURE` (n greedy copies would agree).
    """
    if n < 1:
        raise ValidationError(f"best_of_n needs n >= 1, got {n}")
    candidates = sample_candidates(lm, messages, n=n, options=options)
    rewards = np.asarray(score([c.text for c in candidates]), dtype=np.float64)  # (n,)
    return candidates[int(np.argmax(rewards))], rewards


def sample_candidates(
    lm: LanguageModel,
    messages: Sequence[Message],
    *,
    n: int,
    options: GenerationOptions,
    also: Sequence[Sequence[Message]] = (),
) -> list[Generation]:
    """``n`` sampled replies to ``messages`` and one reply to each of ``also`` (e.g. the
    plain conversation, as a baseline), in one batch; the ``also`` replies come last."""
    if n < 1:
        raise ValidationError(f"best_of_n needs n >= 1, got {n}")
    opts = replace(options, temperature=BEST_OF_N_TEMPERATURE) if options.greedy else options
    return lm.generate_batch([list(messages)] * n + [list(m) for m in also], options=opts)


def reward_guided(
    lm: LanguageModel,
    context: Context,
    score: Scorer,
    *,
    strength: float,
    top_k: int,
    every: int,
    options: GenerationOptions,
) -> Decoded:
    """ARGS / PAD-style blockwise search: every ``every`` tokens, roll out each of the
    ``top_k`` most likely next tokens for ``every`` tokens (``top_k`` batched rows forked from
    the reply's KV cache, :meth:`~LanguageModel.select_rows`) and keep the chunk with the best
    ``mean chunk log p + strength * score(reply so far)``; its cache row carries on.
    Every row runs with ``options.adapter`` (None: the base model) and ``options.steering``."""
    require_logits(lm, "reward_guided")
    if top_k < 1 or every < 1:
        raise ValidationError(f"reward_guided needs top_k, every >= 1, got {top_k}, {every}")
    start = time.perf_counter()
    prompt = lm.encode_context(context)
    budget = _budget(lm, [prompt], options.max_new_tokens)
    rng = np.random.default_rng(options.seed)
    eos = lm.eos_token_ids
    ids: list[int] = []
    reason = "length"
    adapter = options.adapter
    kw: dict[str, Any] = {"steering": options.steering} if options.steering else {}
    if kw and not lm.supports_steering:
        raise BackendError(f"activation steering is not supported by {type(lm).__name__}")
    logits, state = lm.forward([prompt], adapter=adapter, **kw)  # (1, V): next token's dist.
    next_lp = log_softmax(ban(lm, options, [prompt], logits)[0])  # (V,)
    while len(ids) < budget and reason == "length":
        first = np.argsort(-next_lp)[:top_k]  # (k,) candidate next tokens
        chunks = [[int(t)] for t in first]
        sums = next_lp[first].copy()  # (k,) chunk log-probabilities
        done = [int(t) in eos for t in first]
        steps = min(every, budget - len(ids))
        state = lm.select_rows(state, [0] * len(chunks))  # fork the prefix's cache k ways
        logits, state = lm.forward(chunks, state, adapter=adapter, **kw)  # (k, V)
        for _ in range(steps - 1):
            lp = log_softmax(ban(lm, options, [prompt + ids + c for c in chunks], logits))  # (k, V)
            picked = [pick_token(row, options, rng) for row in lp]
            for r, tok in enumerate(picked):
                if not done[r]:
                    chunks[r].append(tok)
                    sums[r] += lp[r, tok]
                    done[r] = tok in eos
            logits, state = lm.forward([[t] for t in picked], state, adapter=adapter, **kw)
        lengths = np.array([len(c) for c in chunks], dtype=np.float64)  # (k,)
        texts = [lm.decode(ids + [t for t in c if t not in eos]) for c in chunks]
        total = sums / lengths + strength * np.asarray(score(texts), dtype=np.float64)  # (k,)
        best = int(np.argmax(total))
        for tok in chunks[best]:
            if tok in eos:
                reason = "stop"
                break
            ids.append(tok)
        next_lp = log_softmax(ban(lm, options, [prompt + ids], logits[best][None])[0])
        state = lm.select_rows(state, [best])  # the kept chunk's cache is the next prefix
        text = lm.decode(ids)
        cut = find_stop(text, options.stop)
        if cut >= 0:
            return Decoded(text[:cut], ids, len(prompt), "stop", time.perf_counter() - start, top_k)
    ids = ids[:budget]
    seconds = time.perf_counter() - start
    return Decoded(lm.decode(ids), ids, len(prompt), reason, seconds, top_k)


# -- the entry point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingConfig:
    """Which decoding method and its parameters (see the module doc).

    ``strength``: contrastive's alpha, MOD's amplification against the plain context,
    reward-guided's reward weight (>= 0). ``n``: best-of-N candidates. ``top_k``/``every``:
    reward-guided candidates and chunk length in tokens.
    """

    method: DecodingMethod = "contrastive"
    strength: float = 1.0
    n: int = 4
    top_k: int = 4
    every: int = 8

    def __post_init__(self) -> None:
        if self.method not in DECODING_METHODS:
            raise ValidationError(
                f"decoding method must be one of {DECODING_METHODS}, got {self.method!r}"
            )
        if not (np.isfinite(self.strength) and self.strength >= 0):
            raise ValidationError(f"strength must be a finite number >= 0, got {self.strength}")
        for name in ("n", "top_k", "every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class PersonalizedGeneration:
    """A reply and how it was decoded (for ``/why``).

    ``rows``: contexts decoded side by side (the cost driver). ``reward``: the reward model's
    score of the reply when one was used. ``details``: per-method facts (MOD weights,
    best-of-N candidate rewards).
    """

    generation: Generation
    method: DecodingMethod
    strength: float
    rows: int
    reward: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)
    """best-of-N: every candidate reply, in sampling order (their rewards in ``details``)."""
    baseline: str | None = None
    """The reply to the plain conversation decoded beside the candidates (``baseline=True``)."""
    cut: list[bool] = field(default_factory=list)
    """best-of-N: per candidate, whether ``max_new_tokens`` stopped it (finish reason length)."""
    calls: list[Generation] = field(default_factory=list)
    """best-of-N: every reply the backend returned (the baseline's too), for their token
    counts (a remote server's usage); the other methods leave it empty."""

    @property
    def text(self) -> str:
        return self.generation.text


def _last_user(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def personalized_generate(
    lm: LanguageModel,
    plain: Sequence[Message],
    personal: Sequence[Message],
    *,
    config: DecodingConfig,
    options: GenerationOptions,
    preferences: Sequence[str] = (),
    reward: PreferenceRewardModel | None = None,
    objectives: Mapping[str, Sequence[Message]] | None = None,
    weights: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
    on_delta: Callable[[str], None] | None = None,
    baseline: bool = False,
    objective_adapters: Mapping[str, str | None] | None = None,
) -> PersonalizedGeneration:
    """Generate the reply to ``personal`` (the prompt with the user's preferences) with
    ``config.method``; ``plain`` is the same conversation without them.

    ``preferences`` and ``reward`` feed ``best_of_n`` and ``reward_guided`` (required there).
    ``mod`` mixes ``objectives`` (name -> context; default ``{"personal": personal}``) by
    ``weights`` (default even) normalized with ``floors`` (objective -> minimum weight that
    the user's weights cannot lower). ``on_delta`` streams text for the loop methods (the
    others deliver their text in one piece at the end). ``baseline``: best-of-N also decodes
    the plain conversation in its batch (``PersonalizedGeneration.baseline``), so a caller can
    hold the chosen reply to the plain reply's relevance. ``objective_adapters``: MOD over
    experts (Personalized Soups' decoding-time mix): objective name -> the adapter its row runs
    (e.g. a dimension expert ``"expert:conciseness+"``); objectives not named run
    ``options.adapter``.
    """
    method, strength = config.method, config.strength
    prompt = _last_user(plain)

    def scorer(texts: Sequence[str]) -> np.ndarray:
        assert reward is not None
        scores = np.asarray(reward.score(preferences, prompt, texts), dtype=np.float64)
        # a judge's unreadable verdict (NaN) counts as undecided, never as the best reply
        out: np.ndarray = np.nan_to_num(scores, nan=UNDECIDED_REWARD)
        return out

    if method in ("best_of_n", "reward_guided") and reward is None:
        raise ValidationError(f"decoding method {method!r} needs a reward model")
    if method == "prompt":
        gen = lm.generate(personal, options=options)
        if on_delta is not None and gen.text:
            on_delta(gen.text)
        score = float(scorer([gen.text])[0]) if reward is not None else None
        return PersonalizedGeneration(gen, method, strength, 1, score)
    if method == "best_of_n":
        gens = sample_candidates(
            lm, personal, n=config.n, options=options, also=[plain] if baseline else []
        )
        sampled = gens[: config.n]
        texts = [g.text for g in sampled]
        unique = list(dict.fromkeys(texts))  # a text sampled twice is scored once
        scored = dict(zip(unique, np.asarray(scorer(unique), dtype=np.float64), strict=True))
        rewards = np.asarray([scored[t] for t in texts], dtype=np.float64)  # (n,)
        gen = sampled[int(np.argmax(rewards))]
        if on_delta is not None and gen.text:
            on_delta(gen.text)
        best = float(rewards.max())
        cands = {"candidate_rewards": [round(float(r), 4) for r in rewards]}
        return PersonalizedGeneration(
            gen,
            method,
            strength,
            len(gens),
            best,
            cands,
            candidates=[g.text for g in sampled],
            baseline=gens[-1].text if baseline else None,
            cut=[g.finish_reason == "length" for g in sampled],
            calls=gens,
        )
    require_logits(lm, method)
    details: dict[str, Any] = {}
    if method == "reward_guided":
        out = reward_guided(
            lm,
            personal,
            scorer,
            strength=strength,
            top_k=config.top_k,
            every=config.every,
            options=options,
        )
    else:
        contexts: list[Sequence[Message]]
        a = options.adapter  # the personalized rows' adapter; the plain row runs the base model
        st = options.steering  # likewise the personalized rows' steering; the plain row: none
        if method == "contrastive":
            contexts, rule = [personal, plain], make_rule("contrastive", strength=strength)
            adapters, steer = [a, None], [st, ()]
        else:
            named = dict(objectives or {"personal": personal})
            mix = normalize_weights(weights or dict.fromkeys(named, 1.0), floors)
            unknown = sorted(set(mix) - set(named))
            if unknown:
                raise ValidationError(f"weights or floors name unknown objectives {unknown}")
            contexts = [named[k] for k in mix]
            per = dict(objective_adapters or {})
            unknown = sorted(set(per) - set(named))
            if unknown:
                raise ValidationError(f"objective_adapters name unknown objectives {unknown}")
            adapters = [per.get(k, a) for k in mix]
            steer = [st] * len(contexts)
            if strength > 0:
                contexts.append(plain)
                adapters.append(None)
                steer.append(())
            rule = make_rule("mod", strength=strength, weights=list(mix.values()))
            details["weights"] = {k: round(v, 4) for k, v in mix.items()}
            if per:
                details["objective_adapters"] = {k: per[k] for k in mix if k in per}
        out = decode(
            lm, contexts, rule, options, on_delta=on_delta, adapters=adapters, steering=steer
        )
    score = float(scorer([out.text])[0]) if reward is not None else None
    if on_delta is not None and method == "reward_guided" and out.text:
        on_delta(out.text)
    gen = Generation(
        text=out.text,
        model=lm.name,
        prompt_tokens=out.prompt_tokens,
        completion_tokens=len(out.token_ids),
        finish_reason=out.finish_reason,
        seconds=out.seconds,
    )
    return PersonalizedGeneration(gen, method, strength, out.rows, score, details)
