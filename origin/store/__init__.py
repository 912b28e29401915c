"""Inventory storage: one interface (`base.Store`), two real backends (SQLite, PostgreSQL)."""
