"""powerwatch: transmitter power readings from stations to SQLite/PostgreSQL and Parquet."""
