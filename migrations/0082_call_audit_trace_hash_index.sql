-- The call audit's trace index as a hash index (issue 18, "Gateway"; docs/benchmarks.md,
-- "Session 23").
--
-- Why: every audited tool call inserts one entry into each of the table's three indexes. The
-- primary key (project, UUIDv7 call id) and the time index grow at one end; the trace index
-- took random 32-hex-digit keys behind the project id, so each insert descended a B-tree to a
-- random leaf and compared text keys under the database collation on the way. Measured with
-- `scripts/profile-audit-insert.sh 512 150` (backend CPU per row, the writer's statement, five
-- runs each): 20.7-22.1 µs with the B-tree, 18.6-20.1 µs with this hash index, 17.2-18.5 µs
-- with no trace index at all. A hash index stores a 4-byte hash per entry and finds its bucket without
-- comparing keys.
--
-- What it must still serve: the only reads by trace id are equality lookups (the run
-- timeline, `GET /v1/platform/runs/{id}/timeline`: `mcp_call_audit m ... WHERE m.trace_id =
-- run.trace_id`), which a hash index answers. It has no project column: row-level security's
-- `project_id` filter is applied to the (few) rows of that trace, as the B-tree's leading
-- column did before. Hash indexes are WAL-logged and crash-safe since PostgreSQL 10.
--
-- On upgrade the index is rebuilt in this migration's transaction, which holds the table's
-- exclusive lock (DROP INDEX) until it commits: the gateway's audit inserts wait (its writer
-- keeps the rows) and so do the console's reads of the table, for as long as one pass over the
-- table takes.

DROP INDEX mcp_call_audit_trace;
CREATE INDEX mcp_call_audit_trace ON mcp_call_audit USING hash (trace_id);
