-- One audit chain per running instance (issue 11): instances no longer share a
-- head row, so appends on one never wait for another's. Each chain's newest
-- (sequence, hash) is also anchored in the token, outside the database.

CREATE TABLE audit_chains (
    id         TEXT PRIMARY KEY,
    -- 1: the chain from before this migration (every record MACed, hash v1);
    -- 2: a batched chain (hash v2 covers the chain id; the newest record of each
    --    batch carries the MAC, which covers the records before it by the links).
    format     BIGINT NOT NULL,
    -- host:pid of the process that started it (informational).
    instance   TEXT NOT NULL,
    started_at BIGINT NOT NULL
);

CREATE TABLE audit_records (
    chain            TEXT NOT NULL REFERENCES audit_chains (id),
    seq              BIGINT NOT NULL,
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
    mac              TEXT,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_records_order ON audit_records (at, chain, seq);

-- The trail so far becomes the chain "legacy".
INSERT INTO audit_chains (id, format, instance, started_at)
SELECT 'legacy', 1, 'before migration 0006', (SELECT MIN(at) FROM audit)
WHERE EXISTS (SELECT 1 FROM audit);
INSERT INTO audit_records (chain, seq, at, caller, cert_fingerprint, operation, key_alias,
                           key_version, outcome, reason, prev_hash, hash, mac)
SELECT 'legacy', seq, at, caller, cert_fingerprint, operation, key_alias, key_version,
       outcome, reason, prev_hash, hash, mac
FROM audit;
DROP TABLE audit;
DROP TABLE audit_head;

-- Changes that read, check and write shared state (keys, tie-ups, entities,
-- approvals, consents) take this row first, so that two instances cannot
-- interleave them; card and settlement work does not.
CREATE TABLE write_locks (
    name TEXT PRIMARY KEY,
    n    BIGINT NOT NULL
);
INSERT INTO write_locks (name, n) VALUES ('admin', 0);
