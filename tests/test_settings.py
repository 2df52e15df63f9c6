"""Settings: read once from the environment, validated, every one documented in the README."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from worker.settings import ConfigError, Settings, load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Configuration") : text.index("## Watching a live fleet")]
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in table]
    assert missing == []


def test_settings_are_frozen_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPITAL_LIMIT", "12345678")
    monkeypatch.setenv("EXCLUDE_SYMBOLS", "005930, 000660")
    monkeypatch.setenv("PAPER_EPOCH", "1767225600")
    s = load_settings()
    assert s.capital_limit == Decimal(12_345_678)
    assert s.exclude_symbols == ("005930", "000660")
    assert s.paper_epoch is not None
    assert s.paper_epoch.timestamp() == 1_767_225_600
    with pytest.raises(ValueError, match="frozen"):
        s.capital_limit = Decimal(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEARTBEAT_MS": "20000"}, "HEARTBEAT_MS must be smaller than LOCK_TTL_MS"),
        ({"N_BARS": "20"}, "N_BARS must exceed LONG_MA_BARS and BREAKOUT_BARS"),
        ({"FLEET_PREFIX": "has space"}, "FLEET_PREFIX"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings()
    assert "\n" not in str(info.value)
