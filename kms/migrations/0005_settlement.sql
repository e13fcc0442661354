-- Settlement and entity-owned RSA keys: the OAEP hash (and MGF1 hash) their
-- ciphertexts use, chosen when the key is created from what the token decrypts
-- (SoftHSM2 2.6: SHA-1 only; other HSMs: SHA-256), and kept for every version.
CREATE TABLE rsa_keys (
    alias     TEXT PRIMARY KEY REFERENCES keys (alias),
    oaep_hash TEXT NOT NULL CHECK (oaep_hash IN ('sha1', 'sha256'))
);
