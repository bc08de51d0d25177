-- Version 2: bodies are ~30 KB of JSON; pglz-compressing each one on insert cost more CPU than
-- the rest of the insert (BENCHMARKS.md): keep them out of line, uncompressed.

ALTER TABLE deliveries ALTER COLUMN body SET STORAGE EXTERNAL;
