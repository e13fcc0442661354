-- Proxy card authentication and proxy loading (PROTOCOL.md §2, §3).

-- A challenge RB handed out for one card, key version and caller; single use.
CREATE TABLE card_challenges (
    id          TEXT PRIMARY KEY,
    caller      TEXT NOT NULL REFERENCES entities (id),
    alias       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    card_id     TEXT NOT NULL,
    rb          TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- An authenticated session. RA || RB are kept sealed (AES-256-GCM in the token
-- under brandkms.session-seal, the session id as associated data); any replica
-- re-derives K_S from K_C, RA and RB. next_counter only grows.
CREATE TABLE card_sessions (
    id            TEXT PRIMARY KEY,
    caller        TEXT NOT NULL REFERENCES entities (id),
    alias         TEXT NOT NULL,
    version       BIGINT NOT NULL,
    card_id       TEXT NOT NULL,
    sealed_nonces TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    next_counter  BIGINT NOT NULL
);

-- Every sealed command; a receipt is accepted once per command.
CREATE TABLE card_commands (
    session_id  TEXT NOT NULL REFERENCES card_sessions (id),
    counter     BIGINT NOT NULL,
    op          TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    txn_id      TEXT NOT NULL UNIQUE,
    sealed_at   BIGINT NOT NULL,
    receipt_at  BIGINT,
    PRIMARY KEY (session_id, counter)
);

-- A LOAD sealed under a proxy_load key, recorded for the offline issuer.
CREATE TABLE proxy_loads (
    txn_id        TEXT PRIMARY KEY,
    issuer        TEXT NOT NULL REFERENCES entities (id),
    requested_by  TEXT NOT NULL REFERENCES entities (id),
    alias         TEXT NOT NULL,
    version       BIGINT NOT NULL,
    card_id       TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'confirmed')),
    at            BIGINT NOT NULL,
    confirmed_at  BIGINT
);
CREATE INDEX proxy_loads_issuer ON proxy_loads (issuer, at);
