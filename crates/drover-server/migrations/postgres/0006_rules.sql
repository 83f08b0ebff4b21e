-- Agent-side rule sets (docs/rules.md), one per group or device. The text
-- is stored exactly as the operator sent it (after the server parsed and
-- checked it); devices parse it again. `scope` is `group:NAME` or
-- `device:ID`.

CREATE TABLE rule_sets (
    scope      TEXT PRIMARY KEY,
    version    TEXT NOT NULL,
    text       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT
);
