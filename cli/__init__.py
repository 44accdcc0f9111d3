"""The `cutq` command: the top of the import graph.

It may import every other package (broker, worker, tui, shared); nothing imports it
except `cli/` itself.  The daemons (broker, worker, textual) are imported inside the
command functions that run them, so a client command such as `cutq status` loads only
`shared`.
"""
