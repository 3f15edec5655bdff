"""The parse stage: a dump body -> batches of records or staging rows, then the dump's verdict.

`stream` is what the client's body is handed to (composed by the scheduler); `document` is the
one-document parse, `split`, `pool` and `segments` the parse of a large dump in worker processes.
"""
