"""``UserTools``: the verbs an MCP host may call, each acting for exactly one user.

The MCP server (:mod:`personalign.integrations.mcp`) is a thin layer over this class, which
needs no MCP SDK: every verb resolves the one user it acts for through the caller's
:class:`~personalign.backends.stores.scoped.Principal` (a stdio server started with
``--user``, or an API key over HTTP), then goes through the same paths as the CLI and the
HTTP service: a :class:`~personalign.backends.stores.scoped.ScopedStore` over the guarded
memory (so every write passes the boundary, and a refusal is logged), and the one feedback
path, :meth:`~personalign.pipeline.Personalizer.record_feedback`.

``recall`` gives a host what personalign's own model would see for a message: the relevant
preferences, the compiled constraints, the system's requirement lines and the quoted,
neutralized memory block (:meth:`~personalign.pipeline.Personalizer.plan`, method
``prompt``), as one ``context`` text for the host's system prompt. Results are JSON-ready
dicts.
"""

from __future__ import annotations

from typing import Any

from personalign.backends.stores.scoped import Principal, ScopedStore
from personalign.constraints import STYLE_KINDS, compile_text
from personalign.errors import PermissionDeniedError, ValidationError
from personalign.generation.enforce import requirement_lines
from personalign.generation.prompt import SYSTEM_PROMPT
from personalign.memory import constraint_edits
from personalign.pipeline import PersonalizeOptions, Personalizer
from personalign.pipeline_parts import REFUSAL
from personalign.safety.injection import render_memories_block
from personalign.types import FeedbackIn, Message, Preference, PreferenceIn, check_text

ACTOR = "mcp"
"""The actor recorded in the event log for every write made through these tools."""


def memory_out(rec: Preference) -> dict[str, Any]:
    """A memory as the tools return it: the record, ``active``, and ``constraints`` (what
    applies for it, each with ``describe``), as the HTTP service shows it."""
    items, _ = constraint_edits.current(rec)
    return {
        **rec.model_dump(mode="json"),
        "active": rec.active,
        "constraints": constraint_edits.as_dicts(items),
    }


class UserTools:
    """One caller's view of the memory. ``principal`` decides which users it may act for;
    ``holder`` names it in errors ("user token", "server started with --user")."""

    def __init__(
        self, personalizer: Personalizer, principal: Principal, *, holder: str = "key"
    ) -> None:
        self.personalizer = personalizer
        self.principal = principal
        self.holder = holder
        self.store = ScopedStore(personalizer.memory.store, principal)

    def user(self, user: str | None) -> tuple[str, str]:
        """The user a call acts for (``user``, or the principal's own when omitted) and its
        stored id; :class:`ValidationError` when a key for many users names none,
        :class:`PermissionDeniedError` when the principal may not act for ``user``."""
        p = self.principal
        if not user:
            if p.scope != "user" or p.user is None:
                raise ValidationError(
                    f"name the user: this {self.holder} acts for many users (pass 'user')"
                )
            user = p.user
        elif p.scope == "user" and user != p.user:
            raise PermissionDeniedError(
                f"this {self.holder} acts only for user {p.user!r}, not for {user!r}"
            )
        return user, p.resolve(user)

    # -- writes (each passes the boundary) -------------------------------------------------

    def remember(
        self,
        text: str,
        *,
        user: str | None = None,
        kind: str = "explicit",
        topic: str | None = None,
    ) -> dict[str, Any]:
        """Store a preference; a harmful one raises :class:`RefusedError` (logged).
        Without ``topic`` it gets one as extraction would give it: ``communication`` (applies
        to every answer) when it compiles to an answer-style constraint, else the topic
        tagger's (a message on the same topic retrieves it)."""
        name, _ = self.user(user)
        if kind not in ("explicit", "implicit"):
            raise ValidationError(f"kind must be explicit or implicit, got {kind!r}")
        if topic is None:
            text = check_text(text, what="memory text")
            style = any(c.kind in STYLE_KINDS for c in compile_text(text))
            topic = "communication" if style else self.personalizer.topic_of(text)
        pin = PreferenceIn(text=text, kind=kind, topic=topic)  # type: ignore[arg-type]
        rec = self.store.add(pin, user=name, actor=ACTOR)
        return {"user": name, "stored": memory_out(rec)}

    def update(
        self, memory_id: str, text: str, *, user: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Write a new version superseding ``memory_id``; the old one stays in history."""
        name, _ = self.user(user)
        rec = self.store.update(memory_id, text, user=name, actor=ACTOR, reason=reason)
        return {"user": name, "previous_id": memory_id, "stored": memory_out(rec)}

    def forget(
        self, memory_id: str, *, user: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """End a preference's validity now; it stays in history (``erase`` deletes)."""
        name, _ = self.user(user)
        rec = self.store.forget(memory_id, user=name, actor=ACTOR, reason=reason)
        return {"user": name, "forgotten": memory_out(rec)}

    def erase(self, *, user: str | None = None, confirm: bool = False) -> dict[str, Any]:
        """Hard-delete everything of the user (history, logs, adapters). Needs ``confirm``."""
        name, stored = self.user(user)
        if not confirm:
            raise ValidationError(
                f"erasing every record of {name!r} cannot be undone: call again with confirm=true"
            )
        done = self.personalizer.erase_user(stored)  # after the user's queued turns
        return {"erased": name, **done}

    def feedback(self, feedback: FeedbackIn, *, user: str | None = None) -> dict[str, Any]:
        """Record a rating, pairwise choice, edit, critique or override and learn from it."""
        name, _ = self.user(user)
        fb = FeedbackIn(**feedback.model_dump(exclude={"source"}), source=ACTOR)
        res = self.personalizer.record_feedback(fb, user=name, store=self.store)
        return {
            "user": name,
            "feedback": res.feedback.model_dump(mode="json"),
            "profile": res.profile.model_dump(mode="json") if res.profile else None,
            "learned": res.memories,
            "notes": res.notes,
        }

    # -- reads -------------------------------------------------------------------------------

    def recall(self, message: str, *, user: str | None = None, k: int = 8) -> dict[str, Any]:
        """What should shape a reply to ``message``: the relevant preferences, the user's
        constraints and style, and ``context``, the text for the host's system prompt (the
        system's requirement lines, then the quoted memory block). A message the boundary
        refuses gets ``refusal`` and no personalization (the refusal is logged)."""
        name, stored = self.user(user)
        history = [Message(role="user", content=check_text(message, what="message"))]
        out: dict[str, Any] = {
            "user": name,
            "refusal": None,
            "preferences": [],
            "constraints": [],
            "style": None,
            "requirements": [],
            "memory_block": None,
            "context": "",
        }
        refusal = self.personalizer.screen(history, user=stored)
        if refusal is not None:
            out["refusal"] = {**refusal, "reply": REFUSAL}
            return out
        options = PersonalizeOptions(method="prompt", k=k, ingest=False)
        plan = self.personalizer.plan(history, user=stored, options=options)
        out["preferences"] = [
            {
                "id": h.record.id,
                "text": h.record.text,
                "kind": h.record.kind,
                "topic": h.record.topic,
                "score": h.score,
                "matched": h.matched,
                "flags": h.record.flags,
            }
            for h in plan.hits
        ]
        out["constraints"] = [
            {**constraint_edits.as_dict(c), "source_id": c.source_id} for c in plan.constraints
        ]
        out["style"] = plan.style.to_dict() if plan.style.weights else None
        out["requirements"] = requirement_lines(plan.constraints, plan.style)
        # the system message personalign's own model would get, less its one-line persona:
        # the requirement lines, then the memory block (quoted data, never instructions)
        system = plan.messages[0].content
        out["context"] = system.removeprefix(SYSTEM_PROMPT).strip()
        if plan.hits:  # the same renderer the pipeline places in that message
            out["memory_block"] = render_memories_block([h.record for h in plan.hits])
        return out

    def list(self, *, user: str | None = None, history: bool = False) -> dict[str, Any]:
        """The user's preferences (every version with ``history``), newest first."""
        name, _ = self.user(user)
        recs = self.store.list(user=name, include_history=history, kinds=["explicit", "implicit"])
        return {"user": name, "memories": [memory_out(r) for r in recs]}

    def history(self, memory_id: str, *, user: str | None = None) -> dict[str, Any]:
        """Every version of one preference, oldest first."""
        name, _ = self.user(user)
        return {
            "user": name,
            "versions": [memory_out(r) for r in self.store.history(memory_id, user=name)],
        }

    def export(self, *, user: str | None = None) -> dict[str, Any]:
        """All of the user's data (memories with history, events, feedback, profiles)."""
        name, _ = self.user(user)
        return self.store.export(user=name)

    def profile(self, *, user: str | None = None) -> dict[str, Any]:
        """The user's profile: active preferences, style weights, and the constraints that
        apply to every reply (merged from the preferences, newest wins per slot)."""
        name, stored = self.user(user)
        recs = self.store.list(user=name, kinds=["explicit", "implicit"])
        prof = self.store.get_profile(user=name)
        constraints, _, _ = self.personalizer.constraints_for(stored)
        style = self.personalizer.style_for(stored)
        return {
            "user": name,
            "preferences": [memory_out(r) for r in recs],
            "weights": prof.weights if prof is not None else {},
            "style": style.to_dict() if style.weights else None,
            "constraints": [
                {**constraint_edits.as_dict(c), "source_id": c.source_id} for c in constraints
            ],
        }
