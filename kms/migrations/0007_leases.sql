-- Retention: background work that one instance at a time carries out, and the
-- indexes the purge of expired card challenges and sessions reads.

-- A named lease ('purger', 'destruction'): held by one instance until expires_at
-- (Unix milliseconds), renewed by its holder, taken over by another instance only
-- once expired. holder is '<hostname>:<pid>:<random>'; acquired_at is when the
-- current holder took it.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX card_challenges_expires ON card_challenges (expires_at);
CREATE INDEX card_sessions_expires ON card_sessions (expires_at);
