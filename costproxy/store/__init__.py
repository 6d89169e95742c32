"""The storage backend: one SQLite file or one Redis, chosen once."""
