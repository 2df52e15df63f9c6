"""The trading core: a worker's loop, the tenure of a lease, the order path and the in-flight
tracker. Imports run one way: worker -> trading -> (strategy, coordination, ledger, broker) ->
market."""
