"""Every Redis key the fleet uses, its type and its TTL. Nothing else names a key.

With prefix ``fleet`` (``FLEET_PREFIX``):

=============================  ==========  ========  ===========================================
key                            type        TTL       meaning
=============================  ==========  ========  ===========================================
``fleet:lock:{symbol}``        string      PX ttl    exists only while a worker owns the symbol;
                                                     value ``{worker_id}:{fence}``. Set by
                                                     acquire, TTL replaced by renew, deleted by
                                                     release (owner only) or by expiry. Or
                                                     ``quarantine:0`` (PX one lock TTL): the key
                                                     held bad data, see below; nobody owns the
                                                     symbol and nobody can until it expires.
``fleet:fence:{symbol}``       integer     none      last fence token issued for the symbol
                                                     (INCR on each acquisition); strictly
                                                     increasing, never deleted in operation.
``fleet:lease:{symbol}``       string      none      meta key: ``{worker_id}:{fence}`` of the last
                                                     lease issued and not yet released. Present
                                                     while the lock key is absent means that
                                                     lease expired; the next acquire reports it
                                                     as ``lock.expired`` and replaces it.
``fleet:worker:{worker_id}``   hash        PX ttl    state, symbol, pid, host, heartbeat_at
                                                     (ISO 8601 UTC); refreshed by the registry.
``fleet:events``               stream      MAXLEN~   notices: type, worker_id, symbol, ts
                                                     (ISO 8601 UTC), data (JSON object).
``fleet:events:dead``          hash        none      consumer group -> how many entries of
                                                     ``fleet:events`` the group acknowledged
                                                     unused (dead-lettered): no notice could be
                                                     read from them (missing or garbage fields),
                                                     or the consumer could not apply it (a lock
                                                     notice without a fence). HINCRBY, never
                                                     reset; the entries stay in the stream, their
                                                     ids in the ERROR log (`coordination.notices`).
``fleet:meta``                 hash        none      ``run_id`` of the Redis server the fence
                                                     counters were last seeded on, ``seeded_at``
                                                     (ISO 8601 UTC), ``floors`` (how many symbols
                                                     were seeded). A ``run_id`` other than the
                                                     server's own means Redis restarted (or failed
                                                     over) and may have lost fences: reseed them
                                                     from Postgres before acquiring
                                                     (`coordination.fences`).
``fleet:reaped``               hash        none      symbol -> ``{worker_id}:{fence}`` of a lease
                                                     the reaper declared expired and whose symbol
                                                     no live worker has taken since; removed when
                                                     one does (``lock.recovered``).
``fleet:singleton:{name}``     string      PX ttl    holder id of a fleet-wide singleton job's
                                                     lease (``reconciler``: the account
                                                     reconciliation); taken when free, renewed
                                                     by its holder, deleted on release or by
                                                     expiry (`coordination.singleton`).
``fleet:params``               hash        none      the fleet's live parameters: setting name
                                                     (upper case, e.g. ``STOP_LOSS_PCT``) ->
                                                     value as text; only the settings changed
                                                     from the environment (``python -m worker
                                                     params``). Replaced whole, together with
                                                     the version, by one script
                                                     (`coordination.params`).
``fleet:params:version``       integer     none      the version of ``fleet:params`` (0 or absent:
                                                     none set); only ever rises. Workers GET it
                                                     every step. The ledger's ``param_changes``
                                                     is the record it is published from.
``fleet:alert:seen:{digest}``  string      PX window an alert with this digest (of what, where and
                                                     why) was admitted for sending; while it
                                                     exists an identical alert is a duplicate
                                                     (SET NX PX, `coordination.alerts`).
``fleet:alert:rate``           integer     PX 60 s   alerts admitted in the current minute of the
                                                     fleet (INCR; the first sets the TTL).
``fleet:alert:suppressed``     integer     none      alerts refused by the rate limit since the
                                                     last admitted one (GETDEL by the next).
``fleet:kis:*``                                      BROKER=kis and PAPER_VENUE: the shared KIS
                                                     rate limit and access tokens, named and
                                                     documented by `broker.kis` (not here).
=============================  ==========  ========  ===========================================

``fleet:lease:*`` deliberately does not match ``fleet:lock:*``, so
``redis-cli --scan --pattern 'fleet:lock:*'`` lists live ownership only (and quarantined keys).

Bad data: anything at these keys that the table does not allow (another type, a lock value that
is no ``{worker_id}:{fence}``, a fence that is no integer) was written by something other than
this package. Whoever meets it logs it at ERROR, counts it (``on_bad_data``) and repairs or skips
that key alone (`coordination.bad_data`): a lock key is quarantined for one lock TTL, so that a
holder whose value it overwrote is past its local deadline before anyone else can own the
symbol; a lease meta key is replaced or deleted; a fence counter is reseeded from the ledger's
floor (`coordination.fences`), so it never goes backwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_WHITESPACE = re.compile(r"\s")


def _glob_escape(value: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", value)


def _check_part(kind: str, value: str) -> str:
    if not value or _WHITESPACE.search(value):
        raise ValueError(f"{kind} must be non-empty and without whitespace, got {value!r}")
    return value


@dataclass(frozen=True)
class Keyspace:
    """Key names under one prefix. ``Keyspace("fleet").lock("005930") == "fleet:lock:005930"``."""

    prefix: str

    def __post_init__(self) -> None:
        _check_part("prefix", self.prefix)

    def lock(self, symbol: str) -> str:
        """String ``{worker_id}:{fence}`` with a PX TTL; exists only while owned."""
        return f"{self.prefix}:lock:{_check_part('symbol', symbol)}"

    def fence(self, symbol: str) -> str:
        """Integer, INCR per acquisition, no TTL."""
        return f"{self.prefix}:fence:{_check_part('symbol', symbol)}"

    def lease(self, symbol: str) -> str:
        """Meta string ``{worker_id}:{fence}`` of the last unreleased lease, no TTL."""
        return f"{self.prefix}:lease:{_check_part('symbol', symbol)}"

    def worker(self, worker_id: str) -> str:
        """Hash state, symbol, pid, host, heartbeat_at with a PX TTL."""
        return f"{self.prefix}:worker:{_check_part('worker_id', worker_id)}"

    @property
    def events(self) -> str:
        """Stream of notices, trimmed with MAXLEN ~."""
        return f"{self.prefix}:events"

    @property
    def events_dead(self) -> str:
        """Hash consumer group -> entries of `events` dead-lettered (acknowledged unread)."""
        return f"{self.prefix}:events:dead"

    @property
    def meta(self) -> str:
        """Hash run_id, seeded_at, floors: which Redis server the fences were seeded on."""
        return f"{self.prefix}:meta"

    @property
    def reaped(self) -> str:
        """Hash symbol -> ``{worker_id}:{fence}`` of reaped leases not yet taken over."""
        return f"{self.prefix}:reaped"

    def singleton(self, name: str) -> str:
        """String holder id with a PX TTL: the lease of one fleet-wide singleton job."""
        return f"{self.prefix}:singleton:{_check_part('name', name)}"

    @property
    def params(self) -> str:
        """Hash setting name -> value text: the fleet's live parameters, no TTL."""
        return f"{self.prefix}:params"

    @property
    def params_version(self) -> str:
        """Integer version of `params`, only ever rising, no TTL."""
        return f"{self.prefix}:params:version"

    def alert_seen(self, digest: str) -> str:
        """String with a PX TTL: an alert of this digest was admitted within the window."""
        return f"{self.prefix}:alert:seen:{_check_part('digest', digest)}"

    @property
    def alert_rate(self) -> str:
        """Integer with a PX TTL: alerts admitted in the current rate window."""
        return f"{self.prefix}:alert:rate"

    @property
    def alert_suppressed(self) -> str:
        """Integer: alerts refused by the rate limit since the last admitted one."""
        return f"{self.prefix}:alert:suppressed"

    @property
    def lease_pattern(self) -> str:
        """SCAN MATCH pattern for every lease meta key."""
        return f"{_glob_escape(self.prefix)}:lease:*"

    @property
    def lock_pattern(self) -> str:
        """SCAN MATCH pattern for every lock key (the prefix's glob characters escaped)."""
        return f"{_glob_escape(self.prefix)}:lock:*"

    @property
    def worker_pattern(self) -> str:
        return f"{_glob_escape(self.prefix)}:worker:*"

    def symbol_of_lock(self, key: str) -> str:
        """Inverse of `lock`."""
        head = f"{self.prefix}:lock:"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a lock key under {self.prefix!r}")
        return key[len(head) :]

    def symbol_of_fence(self, key: str) -> str:
        """Inverse of `fence`."""
        head = f"{self.prefix}:fence:"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a fence key under {self.prefix!r}")
        return key[len(head) :]

    def symbol_of_lease(self, key: str) -> str:
        """Inverse of `lease`."""
        head = f"{self.prefix}:lease:"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a lease key under {self.prefix!r}")
        return key[len(head) :]

    def worker_id_of(self, key: str) -> str:
        """Inverse of `worker`."""
        head = f"{self.prefix}:worker:"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a worker key under {self.prefix!r}")
        return key[len(head) :]
