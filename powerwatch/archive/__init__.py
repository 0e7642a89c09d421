"""Stage: archive days older than the retention to Parquet (`plan`: which days; `writer`: written,
verified, renamed, deleted from the database, recorded).
"""
