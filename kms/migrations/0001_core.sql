-- brandkms core schema. One set of migrations for SQLite and PostgreSQL: only
-- portable types (TEXT, BIGINT; flags are 0 or 1); bytes are stored as lowercase hex;
-- times are Unix milliseconds.

CREATE TABLE entities (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    name             TEXT NOT NULL,
    online           BIGINT NOT NULL,
    tamper_resistant BIGINT NOT NULL,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE keys (
    alias        TEXT PRIMARY KEY,
    class        TEXT NOT NULL,
    algorithm    TEXT NOT NULL,
    purpose      TEXT,
    service_code BIGINT,
    exportable   BIGINT NOT NULL,
    owner_entity TEXT REFERENCES entities (id),
    created_at   BIGINT NOT NULL
);

-- Every token object brandkms creates has exactly one row here, found by CKA_ID.
CREATE TABLE key_versions (
    alias            TEXT NOT NULL REFERENCES keys (alias),
    version          BIGINT NOT NULL,
    state            TEXT NOT NULL,
    cka_id           TEXT NOT NULL UNIQUE,
    kcv              TEXT NOT NULL,
    weak             BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL,
    destroy_after    BIGINT,
    destroyed_at     BIGINT,
    PRIMARY KEY (alias, version)
);

CREATE TABLE tie_ups (
    id              TEXT PRIMARY KEY,
    entity_id       TEXT NOT NULL REFERENCES entities (id),
    state           TEXT NOT NULL,
    valid_from      BIGINT NOT NULL,
    valid_until     BIGINT,
    sponsor_issuer  TEXT REFERENCES entities (id),
    per_txn_limit   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX tie_ups_entity ON tie_ups (entity_id);

CREATE TABLE tie_up_keys (
    tie_up_id TEXT NOT NULL REFERENCES tie_ups (id),
    alias     TEXT NOT NULL REFERENCES keys (alias),
    mode      TEXT NOT NULL,
    PRIMARY KEY (tie_up_id, alias)
);

-- The audit trail: a hash chain, each record MACed in the token.
CREATE TABLE audit (
    seq              BIGINT PRIMARY KEY,
    at               BIGINT NOT NULL,
    caller           TEXT NOT NULL,
    cert_fingerprint TEXT,
    operation        TEXT NOT NULL,
    key_alias        TEXT,
    key_version      BIGINT,
    outcome          TEXT NOT NULL,
    reason           TEXT,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL,
    mac              TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);

-- The head of the chain. Every write transaction updates it first, which
-- serialises appends on both databases.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
