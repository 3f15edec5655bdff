"""PostgreSQL: the schema, the embedded server, staging COPY and the diff/apply SQL."""
