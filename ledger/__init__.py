"""The Postgres ledger: lock mirror, fenced orders, fills, positions, trades, daily summaries.

Data flows order -> fill -> position -> trade -> daily summary. `Ledger` (repository) is the
only door to the database; the money math (`money`) and the order state machine (`orders`) are
pure and tested without one. Imports run ledger -> market/broker types only.
"""
