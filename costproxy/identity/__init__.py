"""Who is calling: principals, client keys and read-only scoped tokens."""
