"""compose.yaml interpolates without any variable set, so every compose command (`config`,
`down`, `ps`, ...) works in a bare shell, and the defaults it falls back on are valid settings."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import load_settings

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yaml"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME ($$ escapes)
_REFERENCE = re.compile(
    r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?[^}]*\}|(?P<bare>[A-Za-z_]\w*))"
)
_COMMENT = re.compile(r"(^|\s)#.*$")  # compose reads no comments (none of ours is in a string)


def _interpolated(path: Path) -> list[tuple[str, str | None]]:
    """Every (reference, operator) in the file outside comments."""
    found = []
    for line in path.read_text().splitlines():
        for ref in _REFERENCE.finditer(_COMMENT.sub("", line)):
            found.append((ref.group(0), None if ref["bare"] else ref["op"]))
    return found


def test_every_variable_compose_interpolates_has_a_default() -> None:
    required = [ref for ref, op in _interpolated(COMPOSE) if op not in (":-", "-")]
    assert required == [], f"compose.yaml needs these set: {required}"


def test_the_empty_epoch_default_is_the_process_start() -> None:
    assert ("${PAPER_EPOCH:-}", ":-") in _interpolated(COMPOSE)
    assert load_settings(paper_epoch="").paper_epoch is None  # SimClock: epoch = its start
