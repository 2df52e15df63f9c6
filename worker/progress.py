"""The demo's progress display: what the servers are doing, then the simulated session.

On a terminal it is one live block drawn by `rich` (a phase spinner while the servers start,
then a bar over the session with the simulated clock, trades closed, realized PnL and open
positions), redrawn in place about ten times a second. Anywhere else (a pipe, a file, CI) it
writes plain lines with no control codes: one per phase, one per simulated hour, one at the
close.

The figures come from the fleet's in-process metrics (`worker.metrics.FleetMetrics`), which the
workers update without waiting, so drawing never touches the servers or paces the day. PnL
here is float won for the eye; the closing table is the ledger's exact figures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from market.calendar import Session
from market.clock import Clock
from worker.metrics import FleetMetrics

if TYPE_CHECKING:
    from rich.console import RenderableType

#: how often the plain writer looks at the clock (wall seconds)
_POLL_S = 0.05


@dataclass(frozen=True)
class Snapshot:
    """The session's figures at one instant."""

    now: datetime
    fraction: float  # of the session elapsed, 0..1
    trades: int
    pnl: float
    open_positions: int
    exposure: float


def _samples(metric: object) -> list[tuple[str, float]]:
    return [(s.name, s.value) for family in metric.collect() for s in family.samples]  # type: ignore[attr-defined]


def snapshot(session: Session, clock: Clock, metrics: FleetMetrics) -> Snapshot:
    now = min(clock.now(), session.close)
    total = (session.close - session.open).total_seconds()
    fraction = min(max((now - session.open).total_seconds() / total, 0.0), 1.0)
    trades = sum(v for name, v in _samples(metrics.trades) if name.endswith("_total"))
    exposures = [v for _, v in _samples(metrics.exposure)]
    return Snapshot(
        now=now,
        fraction=fraction,
        trades=int(trades),
        pnl=sum(v for _, v in _samples(metrics.pnl)),
        open_positions=sum(1 for v in exposures if v > 0),
        exposure=sum(exposures),
    )


def plain_line(s: Snapshot, workers: int) -> str:
    """One progress line without control codes."""
    return (
        f"{s.now:%H:%M} KST  {s.fraction * 100:3.0f}%  trades {s.trades}  "
        f"realized PnL {s.pnl:+,.0f} won  open positions {s.open_positions} of {workers}"
    )


class DemoDisplay:
    """`with DemoDisplay(stream, workers=N) as d:` then `d.phase(...)` and, once the fleet runs,
    `d.attach(session, clock, metrics)`. `live` defaults to whether `stream` is a terminal;
    `redirect_stderr` (live only) draws what others write to stderr above the block."""

    def __init__(
        self,
        stream: TextIO,
        *,
        workers: int,
        live: bool | None = None,
        redirect_stderr: bool = False,
    ) -> None:
        self._stream = stream
        self._workers = workers
        self._live = stream.isatty() if live is None else live
        self._redirect = redirect_stderr
        self._phase = ""
        self._session: Session | None = None
        self._clock: Clock | None = None
        self._metrics: FleetMetrics | None = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich: object | None = None
        self._final: Snapshot | None = None

    # --- what the caller reports ---------------------------------------------------------

    def phase(self, text: str) -> None:
        """What is happening before (or after) the session: starting servers, migrating."""
        self._phase = text
        if not self._live:
            self._write(f"{text} ...")

    def attach(self, session: Session, clock: Clock, metrics: FleetMetrics) -> None:
        """The fleet is running: follow its clock and figures from now on."""
        self._metrics = metrics
        self._clock = clock
        self._session = session
        self._phase = ""
        if not self._live:
            self._write(
                f"trading {session.day} ({session.open:%H:%M}-{session.close:%H:%M} KST) with "
                f"{self._workers} workers"
            )

    def finish(self) -> None:
        """The session is over: write its closing figures (plain) and stop following it."""
        last = self.snapshot()
        self._final = last
        if last is not None and not self._live:
            self._write(plain_line(last, self._workers))

    def snapshot(self) -> Snapshot | None:
        if self._final is not None:
            return self._final
        if self._session is None or self._clock is None or self._metrics is None:
            return None
        return snapshot(self._session, self._clock, self._metrics)

    # --- drawing -------------------------------------------------------------------------

    def __enter__(self) -> DemoDisplay:
        if self._live:
            from rich.console import Console
            from rich.live import Live

            live = Live(
                get_renderable=self._render,
                console=Console(file=self._stream),
                refresh_per_second=10,
                redirect_stdout=False,
                redirect_stderr=self._redirect,
            )
            live.start()
            self._rich = live
        else:
            self._thread = threading.Thread(target=self._plain, name="demo-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._rich is not None:
            self._phase = ""
            self._rich.stop()  # type: ignore[attr-defined]  # draws the last frame and stays
        if self._thread is not None:
            self._thread.join()

    def _write(self, line: str) -> None:
        with self._write_lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def _plain(self) -> None:
        """A line at each simulated hour the session passes (the close's is written at exit)."""
        last_hour: int | None = None
        while not self._stop.wait(_POLL_S):
            s = self.snapshot()
            if s is None or self._final is not None or s.fraction <= 0 or s.fraction >= 1:
                continue
            if last_hour is None and self._session is not None:
                last_hour = self._session.open.hour  # the open: announced by attach
            if s.now.hour != last_hour:
                last_hour = s.now.hour
                self._write(plain_line(s, self._workers))

    def _render(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner

        s = self.snapshot()
        if s is None:  # the servers are starting (nothing left behind once it is over)
            if self._stop.is_set():
                return Group()
            return Spinner("dots", text=self._phase or "starting")
        if self._final is not None and self._phase:  # the day's last frame, and what follows
            return Group(self._session_frame(s), Spinner("dots", text=self._phase))
        return self._session_frame(s)

    def _session_frame(self, s: Snapshot) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        assert self._session is not None
        session = self._session
        top = Table.grid(padding=(0, 1))
        top.add_column()
        top.add_column(width=40)
        top.add_column()
        top.add_row(
            Text(f"{session.day}  {s.now:%H:%M:%S} KST", style="bold"),
            ProgressBar(total=1.0, completed=s.fraction, width=40),
            Text(f"{session.open:%H:%M}-{session.close:%H:%M}", style="dim"),
        )
        pnl_style = "green" if s.pnl > 0 else "red" if s.pnl < 0 else ""
        figures = Text.assemble(
            ("trades ", "dim"),
            (f"{s.trades}", "bold"),
            ("   realized PnL ", "dim"),
            (f"{s.pnl:+,.0f} won", f"bold {pnl_style}".strip()),
            ("   open positions ", "dim"),
            (f"{s.open_positions} of {self._workers}", "bold"),
            (f"  ({s.exposure:,.0f} won)", "dim"),
        )
        return Group(top, figures)
