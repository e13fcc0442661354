-- Issue 14: the request id of the gRPC request a record belongs to (the
-- `x-request-id` the caller received and every log line of the request
-- carries), so a log line and its audit record can be matched. Records of
-- format-3 chains cover it in their hash; older chains have none.
ALTER TABLE audit_records ADD COLUMN request_id TEXT;
