"""Stage: the one ingest path. Chunks in `landing/` are claimed (`landing`), read and validated
(`chunks`), recorded in the ledger under the write lock (`ingest`) and stored set-based
(`store`); the migration of legacy logs goes through `ingest` and `store` too.
"""
