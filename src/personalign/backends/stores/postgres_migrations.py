"""Named, append-only schema migrations for the PostgreSQL store.

Never edit or reorder an entry once released: add a new one at the end. Each runs once, in
one transaction with the others pending, under an advisory lock, and its name is recorded in
``_migrations``. ``{dim}`` is replaced by the embedder's dimension when the schema is created.
Tables are created in the first schema of the connection's ``search_path``.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_users_memories",
        """
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE users (
            user_id    TEXT PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE memories (
            seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id              TEXT NOT NULL UNIQUE,
            user_id         TEXT NOT NULL REFERENCES users (user_id),
            text            TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('explicit', 'implicit', 'episode')),
            topic           TEXT,
            dimension       TEXT,
            tags            JSON NOT NULL DEFAULT '[]',
            strength        DOUBLE PRECISION NOT NULL,
            source          TEXT,
            source_turn_ids JSON NOT NULL DEFAULT '[]',
            valid_from      TIMESTAMPTZ NOT NULL,
            valid_to        TIMESTAMPTZ,
            recorded_at     TIMESTAMPTZ NOT NULL,
            superseded_at   TIMESTAMPTZ,
            superseded_by   TEXT,
            root_id         TEXT NOT NULL,
            previous_id     TEXT,
            flags           JSON NOT NULL DEFAULT '[]',
            meta            JSON NOT NULL DEFAULT '{}',
            embedding       vector({dim}) NOT NULL,
            embedder        TEXT NOT NULL
        );
        CREATE INDEX memories_user_seq ON memories (user_id, seq);
        CREATE INDEX memories_user_root ON memories (user_id, root_id);
        CREATE INDEX memories_user_active ON memories (user_id, kind)
            WHERE superseded_at IS NULL AND valid_to IS NULL;
        CREATE INDEX memories_embedding_hnsw ON memories
            USING hnsw (embedding vector_cosine_ops);

        CREATE FUNCTION personalign_erasing(uid TEXT) RETURNS BOOLEAN
        LANGUAGE sql STABLE AS $$
            SELECT coalesce(current_setting('personalign.erasing', true), '') = uid
        $$;

        CREATE FUNCTION memories_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF personalign_erasing(OLD.user_id) THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'memory versions are immutable: only erase_user deletes them';
            END IF;
            IF NEW.id IS DISTINCT FROM OLD.id OR NEW.user_id IS DISTINCT FROM OLD.user_id
               OR NEW.text IS DISTINCT FROM OLD.text OR NEW.kind IS DISTINCT FROM OLD.kind
               OR NEW.valid_from IS DISTINCT FROM OLD.valid_from
               OR NEW.recorded_at IS DISTINCT FROM OLD.recorded_at
               OR NEW.root_id IS DISTINCT FROM OLD.root_id
               OR NEW.previous_id IS DISTINCT FROM OLD.previous_id
               OR NEW.embedding IS DISTINCT FROM OLD.embedding THEN
                RAISE EXCEPTION 'memory versions are immutable: write a new version';
            END IF;
            IF (OLD.valid_to IS NOT NULL AND NEW.valid_to IS DISTINCT FROM OLD.valid_to)
               OR (OLD.superseded_at IS NOT NULL
                   AND (NEW.superseded_at IS DISTINCT FROM OLD.superseded_at
                        OR NEW.superseded_by IS DISTINCT FROM OLD.superseded_by)) THEN
                RAISE EXCEPTION 'memory versions are immutable: a closed version stays closed';
            END IF;
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER memories_guard BEFORE UPDATE OR DELETE ON memories
            FOR EACH ROW EXECUTE FUNCTION memories_guard();
        """,
    ),
    (
        "0002_memories_fts",
        """
        ALTER TABLE memories ADD COLUMN tsv tsvector
            GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED;
        CREATE INDEX memories_tsv ON memories USING gin (tsv);
        """,
    ),
    (
        "0003_events",
        """
        CREATE TABLE events (
            id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id   TEXT NOT NULL,
            at        TIMESTAMPTZ NOT NULL,
            action    TEXT NOT NULL,
            record_id TEXT,
            actor     TEXT NOT NULL,
            reason    TEXT,
            payload   JSON NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_user ON events (user_id, id);

        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF personalign_erasing(OLD.user_id) THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'the event log is append-only (only erase_user deletes)';
        END
        $$;
        CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_append_only();
        CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
        """,
    ),
    (
        "0004_exchanges",
        """
        CREATE TABLE exchanges (
            seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            user_id      TEXT NOT NULL,
            at           TIMESTAMPTZ NOT NULL,
            model        TEXT NOT NULL,
            method       TEXT NOT NULL,
            latency_ms   DOUBLE PRECISION NOT NULL,
            retrieval_ms DOUBLE PRECISION NOT NULL,
            body         JSON NOT NULL
        );
        CREATE INDEX exchanges_user ON exchanges (user_id, seq);
        """,
    ),
    (
        "0005_profiles",
        """
        CREATE TABLE profiles (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id     TEXT NOT NULL,
            at          TIMESTAMPTZ NOT NULL,
            weights     JSON NOT NULL,
            uncertainty JSON NOT NULL DEFAULT '{}',
            source      TEXT NOT NULL,
            reason      TEXT
        );
        CREATE INDEX profiles_user ON profiles (user_id, id);

        CREATE FUNCTION profiles_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF personalign_erasing(OLD.user_id) THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'profile versions are append-only (only erase_user deletes)';
        END
        $$;
        CREATE TRIGGER profiles_append_only BEFORE UPDATE OR DELETE ON profiles
            FOR EACH ROW EXECUTE FUNCTION profiles_append_only();
        """,
    ),
    (
        "0006_truncate_guards",
        """
        CREATE FUNCTION personalign_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: TRUNCATE is refused (erase_user deletes a user)',
                TG_TABLE_NAME;
        END
        $$;
        CREATE TRIGGER memories_no_truncate BEFORE TRUNCATE ON memories
            FOR EACH STATEMENT EXECUTE FUNCTION personalign_no_truncate();
        CREATE TRIGGER profiles_no_truncate BEFORE TRUNCATE ON profiles
            FOR EACH STATEMENT EXECUTE FUNCTION personalign_no_truncate();
        """,
    ),
    (
        "0007_feedback",
        """
        CREATE TABLE feedback (
            seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            user_id     TEXT NOT NULL,
            at          TIMESTAMPTZ NOT NULL,
            kind        TEXT NOT NULL,
            exchange_id TEXT,
            body        JSON NOT NULL
        );
        CREATE INDEX feedback_user ON feedback (user_id, seq);

        CREATE FUNCTION feedback_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF personalign_erasing(OLD.user_id) THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'feedback is append-only (only erase_user deletes)';
        END
        $$;
        CREATE TRIGGER feedback_append_only BEFORE UPDATE OR DELETE ON feedback
            FOR EACH ROW EXECUTE FUNCTION feedback_append_only();
        CREATE TRIGGER feedback_no_truncate BEFORE TRUNCATE ON feedback
            FOR EACH STATEMENT EXECUTE FUNCTION personalign_no_truncate();
        """,
    ),
    (
        "0008_conflicts",
        """
        CREATE TABLE conflicts (
            seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            user_id     TEXT NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL,
            older_id    TEXT NOT NULL,
            newer_id    TEXT NOT NULL,
            score       DOUBLE PRECISION,
            reason      TEXT,
            resolution  TEXT CHECK (resolution IN ('older', 'newer', 'both')),
            resolved_at TIMESTAMPTZ,
            resolved_by TEXT
        );
        CREATE INDEX conflicts_user ON conflicts (user_id, seq);

        CREATE FUNCTION conflicts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF personalign_erasing(OLD.user_id) THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'conflicts are kept (only erase_user deletes them)';
            END IF;
            IF OLD.resolution IS NOT NULL THEN
                RAISE EXCEPTION 'a resolved conflict stays resolved';
            END IF;
            IF NEW.id IS DISTINCT FROM OLD.id OR NEW.user_id IS DISTINCT FROM OLD.user_id
               OR NEW.created_at IS DISTINCT FROM OLD.created_at
               OR NEW.older_id IS DISTINCT FROM OLD.older_id
               OR NEW.newer_id IS DISTINCT FROM OLD.newer_id THEN
                RAISE EXCEPTION 'a conflict names its two memories once';
            END IF;
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER conflicts_guard BEFORE UPDATE OR DELETE ON conflicts
            FOR EACH ROW EXECUTE FUNCTION conflicts_guard();
        CREATE TRIGGER conflicts_no_truncate BEFORE TRUNCATE ON conflicts
            FOR EACH STATEMENT EXECUTE FUNCTION personalign_no_truncate();
        """,
    ),
]
