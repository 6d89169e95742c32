"""Adapters that persist money: the append-only ledger, client keys and (later) budget state."""
