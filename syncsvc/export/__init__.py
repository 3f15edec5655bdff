"""Out to warehouses: Parquet exports of the change log and the current state, SCD2 history
relations, and dbt sources. Needs the `export` extra (pyarrow) for the Parquet parts only."""
