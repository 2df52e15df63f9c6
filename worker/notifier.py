"""Alerts to a person: the `Notifier` port and its HTTP adapters (httpx).

    Notifier.send(alert)          one request; AlertFailed when the endpoint did not take it
    ├── WebhookNotifier           JSON POST of the alert's fields (`Alert.payload`)
    ├── SlackNotifier             Slack-compatible incoming webhook: {"text": ...}
    └── TelegramNotifier          Bot API: POST {base}/bot<token>/sendMessage {chat_id, text}
    deliver(notifier, alert, attempts)   bounded retries of what may clear up (5xx, 429,
                                         timeouts, refused connections); a 4xx fails at once

The adapters are I/O like a broker adapter and import nothing of this project; the process
shell builds one from the settings (`notifier_from`) and hands it to the fleet's one sender
(`worker.alerts`). Every request is bounded by the adapter's timeout (connect, write, read and
pool alike). An endpoint URL holds a secret (Slack's path, Telegram's bot token): no message,
log line or exception of this module ever contains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from market.clock import KST

if TYPE_CHECKING:  # httpx loads with the first adapter: a worker without alerts never needs it
    import httpx


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: what happened, where (worker, symbol, order) and what to do about it."""

    kind: str  # the notice type it comes from (`risk.halt`, ...) or `alert.test`
    title: str  # what happened, one line
    action: str  # what to do
    at: datetime  # when it happened (timezone-aware)
    fleet: str
    worker: str | None = None
    symbol: str | None = None
    order: str | None = None  # the client order id
    detail: str = ""  # why, with the figures

    def identity(self) -> str:
        """What makes two alerts identical: everything but the time."""
        return "\x1f".join(
            (self.fleet, self.kind, self.worker or "", self.symbol or "", self.order or "",
             self.title, self.detail)
        )  # fmt: skip

    def where(self) -> str:
        parts = [f"fleet {self.fleet}"]
        if self.worker:
            parts.append(f"worker {self.worker}")
        if self.symbol:
            parts.append(f"symbol {self.symbol}")
        if self.order:
            parts.append(f"order {self.order}")
        return ", ".join(parts)

    def text(self) -> str:
        """The message a person reads (Slack, Telegram, the webhook's `text`)."""
        lines = [
            f"[tradefleet] {self.title}",
            f"where: {self.where()}",
            f"when: {self.at.astimezone(KST):%Y-%m-%d %H:%M:%S} KST",
        ]
        if self.detail:
            lines.append(f"why: {self.detail}")
        lines.append(f"what to do: {self.action}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The generic webhook's JSON body."""
        return {
            "kind": self.kind,
            "title": self.title,
            "fleet": self.fleet,
            "worker": self.worker,
            "symbol": self.symbol,
            "order": self.order,
            "detail": self.detail,
            "action": self.action,
            "at": self.at.isoformat(timespec="milliseconds"),
            "text": self.text(),
        }

    def with_detail(self, more: str) -> Alert:
        detail = f"{self.detail}; {more}" if self.detail else more
        return Alert(self.kind, self.title, self.action, self.at, self.fleet, self.worker,
                     self.symbol, self.order, detail)  # fmt: skip


class AlertFailed(Exception):
    """The endpoint did not take the alert. `retryable`: it may on a later try (5xx, 429, a
    timeout, a refused connection); not for 4xx answers (a wrong URL, token or chat)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Notifier(Protocol):
    """Where alerts go. One adapter per kind of endpoint."""

    kind: str

    async def send(self, alert: Alert) -> None:
        """Deliver `alert` with one request, within the adapter's timeout. Returns once the
        endpoint accepted it; raises `AlertFailed` (never with the URL in its message)
        otherwise. Never retries: `deliver` does."""
        ...

    async def aclose(self) -> None:
        """Close the connections."""
        ...


class _HttpNotifier:
    kind = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        import httpx

        self._url = url
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def __repr__(self) -> str:  # the URL is a secret
        return f"{type(self).__name__}(timeout_s={self.timeout_s})"

    def _body(self, alert: Alert) -> Mapping[str, Any]:
        return alert.payload()

    def _check(self, response: httpx.Response) -> None:
        """AlertFailed unless the endpoint accepted the alert."""
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status == 429
        raise AlertFailed(f"{self.kind} endpoint answered {status}", retryable=retryable)

    async def send(self, alert: Alert) -> None:
        import httpx

        try:
            # anyio's deadline on top of httpx's per-phase timeouts: a server that trickles a
            # byte every few seconds never resets it
            with anyio.fail_after(self.timeout_s * 2):
                response = await self._client.post(self._url, json=self._body(alert))
        except TimeoutError:
            raise AlertFailed(f"{self.kind} endpoint did not answer within "
                              f"{self.timeout_s * 2:g} s", retryable=True) from None  # fmt: skip
        except httpx.TimeoutException:
            raise AlertFailed(f"{self.kind} endpoint did not answer within {self.timeout_s:g} s",
                              retryable=True) from None  # fmt: skip
        except httpx.HTTPError as exc:  # refused, reset, DNS: the message may name the URL
            raise AlertFailed(f"{self.kind} endpoint unreachable ({type(exc).__name__})",
                              retryable=True) from None  # fmt: skip
        self._check(response)

    async def aclose(self) -> None:
        await self._client.aclose()


class WebhookNotifier(_HttpNotifier):
    """A generic webhook: the alert's fields as one JSON object (`Alert.payload`); any 2xx
    answer is acceptance."""

    kind = "webhook"


class SlackNotifier(_HttpNotifier):
    """A Slack incoming webhook (or a compatible one: Mattermost, Discord's /slack, ...):
    ``{"text": ...}``."""

    kind = "slack"

    def _body(self, alert: Alert) -> Mapping[str, Any]:
        return {"text": alert.text()}


class TelegramNotifier(_HttpNotifier):
    """A Telegram bot: ``POST {bot_url}/sendMessage {"chat_id", "text"}``, where `bot_url` is
    ``https://api.telegram.org/bot<token>`` (any base, for a test server). The Bot API answers
    ``{"ok": true, ...}``; ``"ok": false`` is a failure even with a 200."""

    kind = "telegram"

    def __init__(self, bot_url: str, chat_id: str, *, timeout_s: float = 5.0) -> None:
        base = bot_url.rstrip("/").removesuffix("/sendMessage")
        super().__init__(f"{base}/sendMessage", timeout_s=timeout_s)
        self.chat_id = chat_id

    def _body(self, alert: Alert) -> Mapping[str, Any]:
        chat: int | str = int(self.chat_id) if self.chat_id.lstrip("-").isdigit() else self.chat_id
        return {"chat_id": chat, "text": alert.text(), "disable_web_page_preview": True}

    def _check(self, response: httpx.Response) -> None:
        super()._check(response)
        try:
            ok = response.json().get("ok") is True
        except ValueError:
            ok = False
        if not ok:
            raise AlertFailed("telegram endpoint answered without ok=true", retryable=False)


def notifier_from(
    url: str, kind: str | None, telegram_chat: str | None, *, timeout_s: float
) -> Notifier:
    """The adapter for ALERT_KIND (default `webhook`) at ALERT_WEBHOOK_URL."""
    if kind == "slack":
        return SlackNotifier(url, timeout_s=timeout_s)
    if kind == "telegram":
        if not telegram_chat:
            raise ValueError("a Telegram notifier needs a chat id")
        return TelegramNotifier(url, telegram_chat, timeout_s=timeout_s)
    if kind not in (None, "webhook"):
        raise ValueError(f"unknown alert kind {kind!r}")
    return WebhookNotifier(url, timeout_s=timeout_s)


async def deliver(
    notifier: Notifier, alert: Alert, attempts: int, *, backoff_s: float = 0.5
) -> int:
    """Send `alert`, trying up to `attempts` times what may clear up (doubling the pause
    from `backoff_s`); returns the attempts it took. Raises the last `AlertFailed`."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts!r}")
    for attempt in range(1, attempts + 1):
        try:
            await notifier.send(alert)
            return attempt
        except AlertFailed as exc:
            if not exc.retryable or attempt == attempts:
                raise
        await anyio.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover
