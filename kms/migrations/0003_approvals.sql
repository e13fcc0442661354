-- Dual control: Admin operations held for a second officer.

-- A proposal. The request as the proposer sent it is kept (protobuf, hex) and run
-- as the approving officer when approved; the approval's state changes to
-- 'approved' in the transaction that records the operation. An expired proposal
-- stays 'pending' here and is reported as expired (nothing writes at expiry).
CREATE TABLE approvals (
    id          TEXT PRIMARY KEY,
    operation   TEXT NOT NULL,
    rule        TEXT NOT NULL,
    summary     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    proposer    TEXT NOT NULL REFERENCES entities (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    decided_by  TEXT,
    decided_at  BIGINT,
    reason      TEXT
);
CREATE INDEX approvals_state ON approvals (state, expires_at);
