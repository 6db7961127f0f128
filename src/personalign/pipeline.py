"""``Personalizer``: the one place that composes memory, safety and generation for a request.

For a user's message: retrieve the relevant memories -> render them as a delimited, quoted
data block -> generate -> log the exchange -> ingest the user's turn into memory in the
background, after the reply, without delaying it. The turn is journaled (fsync'd) before the
reply returns and replayed after a crash; ``close()`` waits for pending ingestion; an erase
waits for the user's requests and drops their queued turns (:mod:`personalign.memory.queue`).

Feedback on a reply goes through :meth:`Personalizer.record_feedback` (the HTTP service, the
``feedback`` commands and ``chat`` all call it): stored, then learned from.

The options, the reply, the request plan and :func:`open_guarded_memory` live in
:mod:`personalign.pipeline_parts`; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from personalign.backends.models.base import Generation, LanguageModel, find_stop
from personalign.backends.stores.scoped import ScopedStore
from personalign.config import Settings, load_settings
from personalign.constraints import ConstraintSet
from personalign.errors import ConfigError, ValidationError
from personalign.feedback.coldstart import ColdStart
from personalign.feedback.learn import FeedbackOutcome, memory_extractor, record_feedback
from personalign.generation.enforce import StylePlan, pick, requirement_lines, style_plan
from personalign.generation.prompt import SYSTEM_PROMPT, build_messages
from personalign.generation.usage import Made, Usage, count_usage
from personalign.memory import Memory
from personalign.memory.journal import Journal
from personalign.memory.queue import IngestionQueue
from personalign.pipeline_parts import (
    ALWAYS_TOPICS,
    REFUSAL,
    REQUIREMENTS_HEADER,
    SAFETY_FLOOR,
    SAFETY_PROMPT,
    PersonalizeOptions,
    Reply,
    RequestPlan,
    _as_history,
    _dimension_lines,
    _gen_dict,
    _render,
    _reward_model_name,
    check_turns,
    how_entry,
    open_guarded_memory,
    prompt_fallback,
    request_scope,
    reward_model_for,
    signed_style,
    used_preferences,
    with_style,
)
from personalign.pipeline_parts import METHODS as METHODS  # re-exported
from personalign.pipeline_parts import Method as Method  # re-exported
from personalign.rewards.quality import degenerate
from personalign.safety.replies import CheckedStream, check_reply, refusal_of, screen_text
from personalign.types import Exchange, FeedbackIn, Message, Preference, SearchHit, new_id, utcnow

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.backends.stores.base import MemoryStore
    from personalign.feedback.adapters import AdapterStore
    from personalign.generation.soups import ExpertSet
    from personalign.memory.extract import TopicTagger
    from personalign.memory.scope import ContextMatcher, Scope
    from personalign.rewards.preference_rm import PreferenceRewardModel
    from personalign.safety.checkers import Checker

log = logging.getLogger(__name__)


def attach_experts(
    model: LanguageModel, settings: Settings, store: AdapterStore | None
) -> ExpertSet | None:
    """The dimension experts of ``settings.experts_dir`` (default ``<home>/experts`` when it
    holds any) attached to ``model`` (local, or a vLLM server, which loads soups as LoRAs):
    its adapter source resolves ``expert:`` and ``soup:`` names (others go to the users'
    ``store``), and the ``steering`` folder beside the experts becomes the local model's
    steering vectors. None (nothing attached) for a model without
    adapters or when there are no experts."""
    from personalign.generation.soups import STEERING_FILE, ExpertSet, SoupAdapters

    root = settings.experts_dir or settings.home / "experts"
    if settings.experts_dir is None and not root.is_dir():
        return None
    if not hasattr(model, "adapters"):
        return None  # a model without adapters (the fake model)
    experts = ExpertSet(root)
    if not experts.poles:
        if settings.experts_dir is not None:
            raise ConfigError(f"experts_dir {root} holds no trained expert")
        return None
    model.adapters = SoupAdapters(experts, fallback=store)
    vectors = root / STEERING_FILE
    if vectors.is_dir() and hasattr(model, "steering"):
        from personalign.generation.steering import SteeringVectors

        model.steering = SteeringVectors.load(vectors)
    return experts


class Personalizer:
    """Personalized chat for many users over one memory and one language model."""

    def __init__(
        self,
        memory: Memory,
        model: LanguageModel | None = None,
        *,
        checker: Checker | None = None,
        adapters: AdapterStore | None = None,
        reward_model: PreferenceRewardModel | None = None,
        experts: ExpertSet | None = None,
    ) -> None:
        """``model``: what answers; without one the personalizer serves the memory and the
        feedback path only (:attr:`model` raises :class:`ConfigError`).
        ``checker`` screens each request; by default the memory's own boundary.
        ``adapters``: per-user adapters; a user who has one is answered with it.
        ``reward_model``: what best-of-N and reward-guided decoding rank by; by default the
        shipped one, loaded on first use (e.g. ``load_reward_model(cache, embedder, lm)``
        adds the opt-in LM probe).
        ``experts``: the dimension experts serving ``soup`` and the expert rows of ``mod``
        (the model's adapter source must resolve their ``expert:``/``soup:`` names, as
        :meth:`open` arranges)."""
        self.memory = memory
        self.experts = experts
        self._model = model
        self.adapters = adapters
        self.checker = checker or getattr(memory.store, "checker", None)
        cfg = memory.settings.ingestion
        journal = Journal(memory.settings.home / "journal") if cfg.journal else None
        self.ingestion = IngestionQueue(
            memory, journal, max_attempts=cfg.max_attempts, backoff_s=cfg.backoff_s
        )
        self.ingestion.replay()  # turns an earlier process acknowledged but never ingested
        self._tagger: TopicTagger | None = None
        self._reward_model: Any = reward_model
        # refreshed inline (once a period): a background refresh could outlive a closed store
        self.coldstart = ColdStart(memory.store, memory.settings)
        self._contexts: ContextMatcher | None = None

    @property
    def model(self) -> LanguageModel:
        """The language model (:class:`ConfigError` when opened without one)."""
        if self._model is None:
            raise ConfigError("this personalizer has no language model (memory and feedback only)")
        return self._model

    @model.setter
    def model(self, model: LanguageModel) -> None:
        self._model = model

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        model: LanguageModel | None = None,
        embedder: Embedder | None = None,
    ) -> Personalizer:
        """Open memory and model as ``settings`` (default: :func:`load_settings`) say."""
        settings = settings or load_settings()
        memory = open_guarded_memory(settings, embedder)
        if model is None:
            from personalign.backends.models import load_model

            model = load_model(settings)
        from personalign.feedback.adapters import AdapterStore

        adapters = getattr(model, "adapters", None)  # local and OpenAI-compatible models
        if adapters is None and hasattr(model, "adapters"):  # ... without an adapter store
            adapters = model.adapters = AdapterStore.for_home(settings.home)
        store = adapters if isinstance(adapters, AdapterStore) else None
        experts = attach_experts(model, settings, store)
        return cls(memory, model, adapters=store, experts=experts)

    # -- the request path ----------------------------------------------------------------

    def retrieve(self, text: str, *, user: str, options: PersonalizeOptions) -> list[SearchHit]:
        """The memories to show the model for ``text``: preferences first, then raw turns
        (see :class:`PersonalizeOptions` for which ones pass)."""
        if options.method == "plain" or not self.memory.has_user(user=user):
            return []
        hits = self.memory.search(text, user=user, k=options.k)
        topic = self.topic_of(text)

        def relevant(h: SearchHit) -> bool:
            dense = h.signals.get("dense", 0.0)
            if h.record.kind == "episode":
                return dense >= options.episode_min_score
            return (
                dense >= options.min_score
                or h.record.topic in ALWAYS_TOPICS
                or (topic is not None and h.record.topic == topic)
            )

        kept = [h for h in hits if relevant(h)]
        return sorted(kept, key=lambda h: h.record.kind == "episode")

    def topic_of(self, text: str) -> str | None:
        """The topic of a text by the memory's topic tagger (None without an embedder)."""
        embedder = getattr(self.memory.store, "embedder", None)
        if embedder is None:
            return None
        if self._tagger is None:
            from personalign.memory.extract import TopicTagger

            self._tagger = TopicTagger(embedder)
        return self._tagger.tag(embedder.embed([text]))[0]

    def prepare(
        self, history: Sequence[Message], *, user: str, options: PersonalizeOptions
    ) -> tuple[list[Message], list[SearchHit], float]:
        """Build the model's messages for ``history`` (ending with the user's turn)."""
        plan = self.plan(history, user=user, options=options)
        return plan.messages, plan.hits, plan.retrieval_ms

    def plan(
        self, history: Sequence[Message], *, user: str, options: PersonalizeOptions
    ) -> RequestPlan:
        """Everything a reply to ``history`` is shaped by: the retrieved memories, the user's
        constraints (from every active preference that compiles to one) and style weights,
        and the model's messages: the system's own requirement lines, then the quoted
        memory block. ``plain`` uses none of them. Out-of-context preferences and open
        conflicts' older sides are held back (:mod:`personalign.memory.scope`)."""
        turns = check_turns(history, user)
        epoch, t0 = self.ingestion.epoch(user), time.perf_counter()
        hits = self.retrieve(turns[-1].content, user=user, options=options)
        constraints = ConstraintSet()
        sources: dict[str, list[str]] = {}
        records: list[Preference] = []
        style = StylePlan()
        scope = None
        if options.method != "plain":  # a new user's style: the population prior's
            style = self.style_for(user)
            if self.memory.has_user(user=user):
                scope = request_scope(self, turns[-1].content, user=user)
                kept = {r.id for r in scope.check([h.record for h in hits])}
                hits = [h for h in hits if h.record.id in kept]
                constraints, sources, records = self.constraints_for(user, scope=scope)
            constraints = ConstraintSet.from_lists([style.constraints, list(constraints)])
        if options.constraints:  # the request's format (JSON) outranks the user's formatting
            style = replace(style, constraints=[], transforms=[])
            content = [c for c in constraints if c.kind in ("avoid_words", "language")]
            constraints = ConstraintSet.from_lists([content, options.constraints])
        block = _render([h.record for h in hits]) if hits else None
        lines = requirement_lines(constraints, style)
        system = SYSTEM_PROMPT
        if lines:
            system += "\n\n" + REQUIREMENTS_HEADER + "\n" + "\n".join(f"- {x}" for x in lines)
        messages = build_messages(turns, block, system_prompt=system)
        shown = {h.record.id for h in hits}
        extra = [r for r in records if r.id not in shown]
        return RequestPlan(
            messages,
            hits,
            (time.perf_counter() - t0) * 1000,
            constraints,
            style,
            sources,
            extra,
            scope.report() if scope is not None else {},
            epoch,
        )

    def _current(
        self, plan: RequestPlan | None, history: list[Message], user: str, opts: PersonalizeOptions
    ) -> RequestPlan:
        """``plan``, or a new one when there is none or the user was erased since it was made
        (called inside the user's hold, where no erase runs)."""
        if plan is not None and plan.epoch == self.ingestion.epoch(user):
            return plan
        return self.plan(history, user=user, options=opts)

    def constraints_for(
        self, user: str, *, scope: Scope | None = None
    ) -> tuple[ConstraintSet, dict[str, list[str]], list[Preference]]:
        """The user's constraints: :func:`personalign.memory.profile.constraints_of` the
        active preferences (newest wins per slot); ``scope``: only those that apply to its
        message. Returns them, each source preference's turn ids, and the source
        preferences."""
        from personalign.memory.profile import constraints_of

        records = [r for r in self.memory.list(user=user) if r.kind != "episode"]
        return constraints_of(scope.check(records) if scope is not None else records)

    def style_for(self, user: str) -> StylePlan:
        """The user's style plan from their current weights (none set: the population
        prior's, :mod:`personalign.feedback.coldstart`; no prior either: no plan)."""
        profile = self.memory.store.get_profile(user=user)
        return style_plan(profile.weights if profile is not None else self.coldstart.weights())

    def respond(
        self,
        message: str | Sequence[Message],
        *,
        user: str,
        options: PersonalizeOptions | None = None,
        plan: RequestPlan | None = None,
    ) -> Reply:
        """Answer the user's latest message, personalized by their memory. ``plan``: the
        :meth:`plan` of this very request already made (the service plans once for all of a
        request's choices), so retrieval is not run again."""
        options = options or PersonalizeOptions()
        history = _as_history(message)
        with self.ingestion.hold(user):  # an erase of the user waits for this reply
            t0 = time.perf_counter()
            plan = self._current(plan, history, user, options)
            options = self.with_depth(self.with_adapter(options, user=user), plan)
            refusal = self.screen(history, user=user)
            if refusal is not None:
                return self._finish(history, plan, REFUSAL, user, options, t0, refusal=refusal)
            text, how, made = self._generate(history, plan, options)
            if (bad := check_reply(self.checker, text)) is not None:  # whatever made it
                text, how, refusal = REFUSAL, None, refusal_of(bad, "reply")
            return self._finish(history, plan, text, user, options, t0, how, refusal, made)

    def stream(
        self,
        message: str | Sequence[Message],
        *,
        user: str,
        options: PersonalizeOptions | None = None,
        on_done: Callable[[Reply], None] | None = None,
        plan: RequestPlan | None = None,
    ) -> Iterator[str]:
        """Like :meth:`respond`, yielding text deltas; ``on_done`` gets the final :class:`Reply`."""
        options = options or PersonalizeOptions()
        history = _as_history(message)
        with self.ingestion.hold(user):  # an erase of the user waits for this reply
            t0 = time.perf_counter()
            plan = self._current(plan, history, user, options)
            options = self.with_depth(self.with_adapter(options, user=user), plan)
            refusal = self.screen(history, user=user)
            if refusal is not None:
                yield REFUSAL
                reply = self._finish(history, plan, REFUSAL, user, options, t0, refusal=refusal)
            elif options.method in ("plain", "prompt", "soup", "steering") and not (
                plan.constraints or plan.style.transforms
            ):
                ended: list[Generation] = []
                checked = CheckedStream(
                    self.model.stream(
                        plan.messages, options=options.generation, on_done=ended.append
                    ),
                    self.checker,
                )
                yield from checked  # per window, checked before it is sent
                made = Made(any(g.finish_reason == "length" for g in ended), tuple(ended))
                text = checked.text
                if checked.tripped is not None:  # cut: the refusal replaces the rest
                    yield ("\n\n" if text else "") + REFUSAL
                    text, refusal = REFUSAL, refusal_of(checked.tripped, "reply")
                reply = self._finish(history, plan, text, user, options, t0, None, refusal, made)
            else:  # enforced and decoding-time methods deliver the whole reply at the end
                text, how, made = self._generate(history, plan, options)
                if (bad := check_reply(self.checker, text)) is not None:
                    text, how, refusal = REFUSAL, None, refusal_of(bad, "reply")
                yield text
                reply = self._finish(history, plan, text, user, options, t0, how, refusal, made)
            if on_done is not None:
                on_done(reply)

    def _finish(
        self,
        history: list[Message],
        plan: RequestPlan,
        text: str,
        user: str,
        options: PersonalizeOptions,
        t0: float,
        decoding: dict[str, Any] | None = None,
        refusal: dict[str, object] | None = None,
        made: Made | None = None,
    ) -> Reply:
        messages = plan.messages
        exchange = Exchange(
            id=new_id(),
            user_id=user,
            at=utcnow(),
            messages=messages,
            response=text,
            model=self.model.name,
            method="refused" if refusal else options.method,
            options={
                "k": options.k,
                "min_score": options.min_score,
                **_gen_dict(options.generation),
            },
            preferences=used_preferences([], None)
            if refusal
            else used_preferences(plan.hits, plan),
            latency_ms=(time.perf_counter() - t0) * 1000,
            retrieval_ms=plan.retrieval_ms,
            meta={"refusal": refusal}
            if refusal
            else {
                **self._adapter_meta(options, user),
                **({"decoding": decoding} if decoding else {}),
                **(decoding or {}).pop("_enforced", {}),
                **self.coldstart.question(user),  # one question for a user with no history
                **({"scope": plan.scope} if plan.scope else {}),
            },
        )
        self.memory.store.log_exchange(exchange, user=user)
        if options.ingest and not refusal:
            # the turn before gives context: options the assistant offered, a question asked
            self._ingest_later(history[-2:], user=user)
        made = made or Made()
        usage = Usage() if refusal else count_usage(self.model, messages, text, made.calls)
        reason = "content_filter" if refusal else "length" if made.cut else "stop"
        return Reply(text=text, exchange=exchange, finish_reason=reason, usage=usage)

    def erase_adapters(self, user: str) -> int:
        """Delete every adapter version of ``user`` (under the memory's data directory and
        the model's adapter store) and unload them from the model; return how many versions
        were deleted. Part of erasing a user: adapters are trained on their data."""
        from personalign.feedback.adapters import AdapterStore

        roots = {AdapterStore.for_home(self.memory.settings.home).root}
        if self.adapters is not None:
            roots.add(self.adapters.root)
        n = sum(AdapterStore(root).erase(user) for root in roots)
        unload = getattr(self._model, "unload_missing_adapters", None)  # None: no model
        if callable(unload):
            unload()
        return n

    def with_adapter(self, options: PersonalizeOptions, *, user: str) -> PersonalizeOptions:
        """``options`` set to generate with the user's adapter, when they have one (and no
        adapter was asked for explicitly)."""
        if self.adapters is None or options.generation.adapter is not None:
            return options
        info = self.adapters.latest(user)
        if info is None:
            return options
        return replace(options, generation=replace(options.generation, adapter=info.name))

    def with_depth(self, options: PersonalizeOptions, plan: RequestPlan) -> PersonalizeOptions:
        """``options`` set for the ``soup`` and ``steering`` methods from the user's style
        weights (:func:`~personalign.pipeline_parts.signed_style`): the soup of the experts as
        the adapter (unless the user's own adapter serves: it was trained on them), or the
        poles' steering strengths. No leaning dimension: the prompt alone. Raises
        :class:`ValidationError` (an HTTP 400) when this server lacks the method's parts."""
        if options.method not in ("soup", "steering"):
            return options
        signed = signed_style(plan.style.weights)
        gen = options.generation
        if options.method == "soup":
            if self.experts is None:
                raise ValidationError(
                    "method 'soup' needs dimension experts: run `personalign train experts` "
                    "(or set experts_dir) and use the local model"
                )
            from personalign.generation.soups import soup_name

            usable = {d: w for d, w in signed.items() if d in self.experts.dimensions}
            if gen.adapter is None and usable:
                gen = replace(gen, adapter=soup_name(usable))
        else:
            vectors = getattr(self._model, "steering", None)
            if vectors is None:
                raise ValidationError(
                    "method 'steering' needs steering vectors on the local model: run "
                    "`personalign train experts` (it writes steering vectors beside them)"
                )
            strengths = {f"{d}{'+' if w > 0 else '-'}": abs(w) for d, w in signed.items()}
            steer = tuple((p, v) for p, v in strengths.items() if p in vectors.poles)
            gen = replace(gen, steering=steer)
        return replace(options, generation=gen)

    def _adapter_meta(self, options: PersonalizeOptions, user: str) -> dict[str, object]:
        name = options.generation.adapter
        if name is None:  # the base model serves; say so when the safety check rejected it
            return self.adapters.rejected_meta(user) if self.adapters is not None else {}
        info = self.adapters.latest(user) if self.adapters is not None else None
        return {"adapter": info.label if info is not None and info.name == name else name}

    def _generate(
        self, history: list[Message], plan: RequestPlan, options: PersonalizeOptions
    ) -> tuple[str, dict[str, Any] | None, Made]:
        """The reply text, how it was made (for /why) and :class:`Made`: the method's
        candidates, then :func:`~personalign.generation.enforce.pick` (quality floor,
        constraints, reward) and the deterministic finish (style transforms, constraint
        repair); the request's stop strings cut the final text too."""
        text, how, made = self._decode(history, plan, options)
        at = find_stop(text, options.generation.stop)
        return (text, how, made) if at < 0 else (text[:at], how, replace(made, cut=False))

    def _decode(
        self, history: list[Message], plan: RequestPlan, options: PersonalizeOptions
    ) -> tuple[str, dict[str, Any] | None, Made]:
        from personalign.constraints import decoding_form
        from personalign.generation.decoding import (
            DecodingConfig,
            DecodingMethod,
            personalized_generate,
        )

        messages, hits = plan.messages, plan.hits
        gen_opts = options.generation
        form = decoding_form(plan.constraints)
        if options.method != "plain" and form:
            budget = form.max_new_tokens or gen_opts.max_new_tokens
            gen_opts = replace(
                gen_opts,
                banned_chars=gen_opts.banned_chars + form.banned_chars,
                banned_words=(*gen_opts.banned_words, *form.banned_words),
                max_new_tokens=min(gen_opts.max_new_tokens, budget),
                json_schema=gen_opts.json_schema or form.json_schema,
            )
        binding = gen_opts.max_new_tokens == options.generation.max_new_tokens  # the request's
        question = history[-1].content
        personalize = bool(hits or plan.constraints or plan.style.weights)
        if not personalize:
            gen = self.model.generate(messages, options=gen_opts)
            return gen.text, None, Made(binding and gen.finish_reason == "length", (gen,))
        if options.method in ("plain", "prompt", "soup", "steering"):  # plain: request constraints
            gen = self.model.generate(messages, options=gen_opts)
            cut = [gen.finish_reason == "length"]
            done = pick([gen.text], plan.constraints, plan.style, question=question, cut=cut)
            made = Made(binding and cut[0], (gen,))
            how: dict[str, Any] = {"method": options.method}
            if gen_opts.steering:
                how["steering"] = {p: round(s, 3) for p, s in gen_opts.steering}
            return done.text, how_entry(plan, done, how), made
        plain = build_messages(history, None)
        safety = build_messages(history, None, system_prompt=SAFETY_PROMPT)
        prefs = [h.record.text for h in hits if h.record.kind != "episode"]
        prefs += [r.text for r in plan.constraint_records if r.text not in prefs]
        reward = self._reward() if options.method in ("best_of_n", "reward_guided") else None
        objectives: dict[str, Sequence[Message]] = {"personal": messages, "safety": safety}
        weights: dict[str, float] = {"personal": 1.0}
        experts: dict[str, str | None] = {}  # MOD over experts: a dimension row runs its pole's
        poles = set(self.experts.poles) if self.experts is not None else set()
        for dim, line in _dimension_lines(plan.style).items():
            objectives[dim] = build_messages(history, None, system_prompt=f"{SYSTEM_PROMPT} {line}")
            weights[dim] = plan.style.weights[dim]
            pole = f"{dim}{'+' if plan.style.weights[dim] >= 0.5 else '-'}"
            if options.method == "mod" and pole in poles:
                experts[dim] = f"expert:{pole}"
        out = personalized_generate(
            self.model,
            plain,
            messages,
            config=DecodingConfig(
                method=cast(DecodingMethod, options.method), strength=options.strength, n=options.n
            ),
            options=gen_opts,
            preferences=prefs,
            reward=reward,
            objectives=objectives,
            weights=weights,
            floors={"safety": SAFETY_FLOOR},
            baseline=options.method == "best_of_n",
            objective_adapters=experts or None,
        )
        how = {
            "method": out.method,
            "strength": out.strength,
            "rows": out.rows,
            **out.details,
        }
        if out.reward is not None:
            how["reward"] = round(out.reward, 4)
        if reward is not None:
            how["reward_model"] = _reward_model_name(reward)
        candidates = out.candidates or [out.text]
        cut = out.cut or [out.generation.finish_reason == "length"]
        calls = out.calls or [out.generation]
        rewards = with_style(out.details.get("candidate_rewards"), candidates, plan.style.weights)
        done = pick(
            candidates,
            plan.constraints,
            plan.style,
            question=question,
            rewards=rewards,
            quality=self._quality(),
            baseline=out.baseline,
            cut=cut,
        )
        if len(candidates) == 1 and degenerate(done.text) is not None:
            gen = self.model.generate(messages, options=gen_opts)
            done = prompt_fallback(plan, out.text, cut[0], gen, question, self._quality(), how)
            cut, calls = [cut[0], gen.finish_reason == "length"], [*calls, gen]
        made = Made(binding and cut[done.index], tuple(calls))
        return done.text, how_entry(plan, done, how), made

    def _quality(self) -> Any:
        """The quality floor over the memory's embedder (None without one)."""
        if getattr(self, "_quality_floor", None) is None:
            embedder = getattr(self.memory.store, "embedder", None)
            if embedder is None:
                return None
            from personalign.rewards.quality import QualityFloor

            self._quality_floor = QualityFloor(embedder)
        return self._quality_floor

    def _reward(self) -> Any:
        """:func:`~personalign.pipeline_parts.reward_model_for` the memory, loaded once."""
        if self._reward_model is None:
            self._reward_model = reward_model_for(self.memory)
        return self._reward_model

    def screen(self, history: Sequence[Message], *, user: str) -> dict[str, object] | None:
        """Check the user's latest message with the boundary, whatever their preferences say.
        Returns the refusal (category, reason) or None when the request may be answered."""
        verdict = screen_text(self.checker, history[-1].content)  # the request thresholds
        if verdict is None:
            return None
        self.memory.store.record_event(
            user=user,
            action="refuse_request",
            reason=f"{verdict.category}: {verdict.reason}",
            payload={"text": history[-1].content},
        )
        return refusal_of(verdict, "request")

    # -- background ingestion and erasure ------------------------------------------------

    def _ingest_later(self, turns: list[Message], *, user: str) -> None:
        self.ingestion.turns(turns, user=user)  # journaled (fsync'd) before the reply returns

    def erase_user(self, user: str, *, store: MemoryStore | None = None) -> dict[str, int]:
        """Hard-delete everything of ``user`` (through ``store``, default the memory's) and
        their adapters, once none of their requests or queued turns is in flight; nothing of
        theirs is written after (:meth:`IngestionQueue.erase`). Returns the counts."""
        target = self.memory.store if store is None else store
        rows = self.ingestion.erase(user, lambda: target.erase_user(user=user))
        return {"rows": rows, "adapters": self.erase_adapters(user)}

    def ingestion_status(self, user: str) -> dict[str, Any]:
        """The user's background ingestion: turns pending, and failures after retries."""
        return self.ingestion.status(user)

    # -- the feedback path ---------------------------------------------------------------

    def record_feedback(
        self, feedback: FeedbackIn, *, user: str, store: MemoryStore | None = None
    ) -> FeedbackOutcome:
        """Store ``feedback`` (a rating, pairwise choice, edit, critique or weight override,
        see :mod:`personalign.feedback.events`) for ``user`` and learn from it with the
        memory's extractor: critique and edits reach the memory, choices, ratings and edits
        re-estimate the user's weights (:func:`personalign.feedback.learn.record_feedback`).
        ``store``: the store to write through, over this personalizer's memory (default: the
        memory's own; the HTTP service passes the caller's scoped store)."""
        target = self.memory.store if store is None else store
        scoped = target.principal.resolve(user) if isinstance(target, ScopedStore) else user
        with self.ingestion.hold(scoped):  # never written after an erase of the user
            return record_feedback(
                target,
                feedback,
                user=user,
                extractor=memory_extractor(self.memory),
                prior=self.coldstart.weight_prior(),  # estimates start from the population's
            )

    def flush(self, *, user: str | None = None, check: bool = True) -> None:
        """Wait until every queued turn (of ``user``) is ingested; with ``check``, raise
        :class:`~personalign.errors.IngestionError` listing the failures not raised before."""
        self.ingestion.flush(user=user, check=check)

    def close(self) -> None:
        """Finish pending ingestion, then release the memory and the model."""
        try:
            self.ingestion.close()
        finally:
            self.memory.close()
            if self._model is not None:
                self._model.close()

    def __enter__(self) -> Personalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
