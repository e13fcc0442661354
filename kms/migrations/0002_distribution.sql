-- Key distribution: consents and deliveries.

-- An entity's transport key is a key of class transport, alias
-- "transport.<entity>"; its active version is the one in use.

-- An issuer's consent that a third party receive one of its keys. Revoking keeps
-- the row (revoked_at set); granting again clears it.
CREATE TABLE consents (
    issuer      TEXT NOT NULL REFERENCES entities (id),
    third_party TEXT NOT NULL REFERENCES entities (id),
    alias       TEXT NOT NULL REFERENCES keys (alias),
    granted_by  TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    revoked_by  TEXT,
    revoked_at  BIGINT,
    PRIMARY KEY (issuer, third_party, alias)
);

-- Every delivery: which version went to whom, when, under which transport key.
CREATE TABLE distributions (
    id                TEXT PRIMARY KEY,
    alias             TEXT NOT NULL,
    version           BIGINT NOT NULL,
    entity_id         TEXT NOT NULL REFERENCES entities (id),
    transport_alias   TEXT NOT NULL,
    transport_version BIGINT NOT NULL,
    kcv               TEXT NOT NULL,
    at                BIGINT NOT NULL
);
CREATE INDEX distributions_entity ON distributions (entity_id);
CREATE INDEX distributions_key ON distributions (alias, version);
