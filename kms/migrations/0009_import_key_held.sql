-- Key import (Admin/ImportKey) is a sensitive operation. A deployment whose
-- stored dual-control set holds anything at all (dual control in use) holds
-- imports too from now on; one that turned dual control off (an empty set)
-- or has not written its set yet is left as it is. "Sensitive" must not
-- depend on when a deployment was initialised.
UPDATE service_settings
SET value = value || ',import_key'
WHERE name = 'dual_control'
  AND value IS NOT NULL
  AND value <> ''
  AND value NOT LIKE '%import_key%';
