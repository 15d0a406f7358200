"""Reading and writing data files: rows (JSONL, JSON, atomic writes; was bioinstruct.io) and
instruction records (was bioinstruct.records)."""
