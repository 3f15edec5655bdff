"""The change feed: named consumers, follow, webhook delivery, retention (docs/change-feed.md).

Modules: `notify` (the channel units notify on commit), `consumers` (the consumers table, lag,
acknowledgements), `waker` (LISTEN with a poll fallback), `follow` (`changes --consumer/--follow`),
`webhook` (delivery from `serve`), `prune` (retention), `cli` (the `changes` and `consumers`
commands). Reading and rendering the change log itself is `syncsvc.changefeed`.
"""
