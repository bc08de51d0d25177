-- Version 5: traces. Beside each job, the W3C trace context of the intake that stored it (JSON:
-- {"traceparent": ...}), so the worker's attempts continue the intake's trace; on each attempt,
-- the trace id of its span and Commerce Layer's `meta.trace_id` of every answer it got (comma
-- separated: what Commerce Layer's support asks for).

ALTER TABLE jobs ADD COLUMN trace_context TEXT;

ALTER TABLE attempts ADD COLUMN trace_id TEXT;

ALTER TABLE attempts ADD COLUMN cl_trace_ids TEXT;
