-- Key lifecycle (issue 13): a version's cryptoperiod (not-before inclusive,
-- not-after exclusive, Unix ms; NULL: unbounded) and when an officer marked it
-- compromised (NULL: never). The policy refuses a compromised version for
-- everything and a version outside its cryptoperiod for new work.
ALTER TABLE key_versions ADD COLUMN not_before BIGINT;
ALTER TABLE key_versions ADD COLUMN not_after BIGINT;
ALTER TABLE key_versions ADD COLUMN compromised_at BIGINT;

-- Marking a version compromised is a sensitive operation: held wherever dual
-- control is in use, as 0009 did for imports.
UPDATE service_settings
SET value = value || ',mark_compromised'
WHERE name = 'dual_control'
  AND value IS NOT NULL
  AND value <> ''
  AND value NOT LIKE '%mark_compromised%';
UPDATE service_settings
SET value = value || ',widen_cryptoperiod'
WHERE name = 'dual_control'
  AND value IS NOT NULL
  AND value <> ''
  AND value NOT LIKE '%widen_cryptoperiod%';
