"""Everything that touches the database: tables, engine, migrations, bulk load, queries."""
