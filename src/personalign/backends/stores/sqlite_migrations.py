"""Named, append-only schema migrations for the SQLite store.

Never edit or reorder an entry once released: add a new one at the end. Each runs once, in a
transaction, and its name is recorded in ``_migrations``.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_users_memories",
        """
        CREATE TABLE users (
            user_id    TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        );
        CREATE TABLE memories (
            rowid           INTEGER PRIMARY KEY,
            id              TEXT NOT NULL UNIQUE,
            user_id         TEXT NOT NULL REFERENCES users(user_id),
            text            TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('explicit', 'implicit', 'episode')),
            topic           TEXT,
            dimension       TEXT,
            tags            TEXT NOT NULL DEFAULT '[]',
            strength        REAL NOT NULL,
            source          TEXT,
            source_turn_ids TEXT NOT NULL DEFAULT '[]',
            valid_from      TEXT NOT NULL,
            valid_to        TEXT,
            recorded_at     TEXT NOT NULL,
            superseded_at   TEXT,
            superseded_by   TEXT,
            root_id         TEXT NOT NULL,
            previous_id     TEXT,
            flags           TEXT NOT NULL DEFAULT '[]',
            meta            TEXT NOT NULL DEFAULT '{}',
            embedding       BLOB,
            embedder        TEXT,
            scope           TEXT NOT NULL
        );
        CREATE INDEX memories_user_active ON memories (user_id, superseded_at, valid_to);
        CREATE INDEX memories_user_root ON memories (user_id, root_id);
        CREATE TRIGGER memories_text_immutable BEFORE UPDATE OF text, user_id, kind ON memories
        BEGIN
            SELECT RAISE(ABORT, 'memory versions are immutable: write a new version');
        END;
        """,
    ),
    (
        "0002_memories_fts",
        """
        CREATE VIRTUAL TABLE memories_fts USING fts5(
            scope, text, content='memories', content_rowid='rowid',
            tokenize='porter unicode61'
        );
        CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
            INSERT INTO memories_fts (rowid, scope, text) VALUES (new.rowid, new.scope, new.text);
        END;
        CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
            INSERT INTO memories_fts (memories_fts, rowid, scope, text)
            VALUES ('delete', old.rowid, old.scope, old.text);
        END;
        """,
    ),
    (
        "0003_events",
        """
        CREATE TABLE events (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id   TEXT NOT NULL,
            at        TEXT NOT NULL,
            action    TEXT NOT NULL,
            record_id TEXT,
            actor     TEXT NOT NULL,
            reason    TEXT,
            payload   TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_user ON events (user_id, id);
        CREATE TABLE erasing (user_id TEXT PRIMARY KEY);
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN
            SELECT RAISE(ABORT, 'the event log is append-only');
        END;
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        WHEN NOT EXISTS (SELECT 1 FROM erasing WHERE user_id = old.user_id) BEGIN
            SELECT RAISE(ABORT, 'the event log is append-only (only erase_user deletes)');
        END;
        """,
    ),
    (
        "0004_exchanges",
        """
        CREATE TABLE exchanges (
            rowid        INTEGER PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            user_id      TEXT NOT NULL,
            at           TEXT NOT NULL,
            model        TEXT NOT NULL,
            method       TEXT NOT NULL,
            latency_ms   REAL NOT NULL,
            retrieval_ms REAL NOT NULL,
            body         TEXT NOT NULL
        );
        CREATE INDEX exchanges_user ON exchanges (user_id, rowid);
        """,
    ),
    (
        "0005_profiles",
        """
        CREATE TABLE profiles (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id     TEXT NOT NULL,
            at          TEXT NOT NULL,
            weights     TEXT NOT NULL,
            uncertainty TEXT NOT NULL DEFAULT '{}',
            source      TEXT NOT NULL,
            reason      TEXT
        );
        CREATE INDEX profiles_user ON profiles (user_id, id);
        CREATE TRIGGER profiles_no_update BEFORE UPDATE ON profiles BEGIN
            SELECT RAISE(ABORT, 'profile versions are append-only');
        END;
        """,
    ),
    (
        "0006_feedback",
        """
        CREATE TABLE feedback (
            rowid       INTEGER PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            user_id     TEXT NOT NULL,
            at          TEXT NOT NULL,
            kind        TEXT NOT NULL,
            exchange_id TEXT,
            body        TEXT NOT NULL
        );
        CREATE INDEX feedback_user ON feedback (user_id, rowid);
        CREATE TRIGGER feedback_no_update BEFORE UPDATE ON feedback BEGIN
            SELECT RAISE(ABORT, 'feedback is append-only');
        END;
        CREATE TRIGGER feedback_no_delete BEFORE DELETE ON feedback
        WHEN NOT EXISTS (SELECT 1 FROM erasing WHERE user_id = old.user_id) BEGIN
            SELECT RAISE(ABORT, 'feedback is append-only (only erase_user deletes)');
        END;
        """,
    ),
    (
        "0007_conflicts",
        """
        CREATE TABLE conflicts (
            rowid       INTEGER PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            user_id     TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            older_id    TEXT NOT NULL,
            newer_id    TEXT NOT NULL,
            score       REAL,
            reason      TEXT,
            resolution  TEXT CHECK (resolution IN ('older', 'newer', 'both')),
            resolved_at TEXT,
            resolved_by TEXT
        );
        CREATE INDEX conflicts_user ON conflicts (user_id, rowid);
        CREATE TRIGGER conflicts_sides_immutable
        BEFORE UPDATE OF id, user_id, created_at, older_id, newer_id ON conflicts BEGIN
            SELECT RAISE(ABORT, 'a conflict names its two memories once');
        END;
        CREATE TRIGGER conflicts_resolved_once BEFORE UPDATE ON conflicts
        WHEN old.resolution IS NOT NULL BEGIN
            SELECT RAISE(ABORT, 'a resolved conflict stays resolved');
        END;
        """,
    ),
]
