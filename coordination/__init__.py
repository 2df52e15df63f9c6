"""Coordination between workers through Redis: symbol locks with fencing, lease heartbeats,
the worker registry and the notice stream. Imports nothing from `worker` or `ledger`."""
