-- Dual control (rule 7) lives in the database, not in each instance's
-- configuration, so that an instance started with another kms.toml cannot
-- bypass it. `value` is the comma-separated list of sensitive operations held
-- for a second officer; NULL until `kms init` (or, for a deployment initialised
-- before this migration, the first `kms serve`) writes it from the
-- configuration, once. From then on only Admin/SetDualControl changes it.
CREATE TABLE service_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT,
    updated_at BIGINT NOT NULL
);

INSERT INTO service_settings (name, value, updated_at) VALUES ('dual_control', NULL, 0);
