"""Fail when pyproject.toml and the lock files disagree (run by CI and tests/test_deploy.py).

Offline and deterministic: it does not re-resolve (that needs the index and drifts with every
release), it checks that the locks still answer pyproject.toml:

* every requirement of pyproject.toml (runtime in requirements.txt; runtime and every extra in
  requirements-dev.txt) is pinned, for Python 3.11 and 3.13 on Linux x86_64, at a version its
  specifier allows;
* every pin that only pyproject.toml asked for ("via tradefleet") is still asked for, so a
  dependency removed from pyproject.toml does not linger in the lock;
* requirements-dev.txt pins what requirements.txt pins at the same versions (CI tests the
  versions the image ships);
* every pin carries hashes.

Exit 0 when all hold; else one line per problem and exit 1, ending with the command that fixes
it: `bash tools/lock.sh`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "tradefleet"
RUNTIME_LOCK = "requirements.txt"
DEV_LOCK = "requirements-dev.txt"

#: The environments the locks must serve: CI and the image (Linux x86_64, CPython 3.11 and 3.13).
TARGETS = tuple(
    {
        "python_version": v,
        "python_full_version": f"{v}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }
    for v in ("3.11", "3.13")
)

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(;(?P<marker>[^\\]+))?"
)


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    via: tuple[str, ...]
    hashed: bool

    def applies(self, env: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(env)


def read_lock(path: Path) -> list[Pin]:
    """The pins of a uv/pip-tools requirements file, with their `# via` annotations."""
    pins: list[Pin] = []
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            pins.append(Pin(**current))  # type: ignore[arg-type]

    for raw in path.read_text().splitlines():
        line = raw.strip()
        match = _PIN.match(raw)
        if match:
            flush()
            marker = match["marker"]
            current = {
                "name": canonicalize_name(match["name"]),
                "version": Version(match["version"]),
                "marker": Marker(marker.strip()) if marker else None,
                "via": (),
                "hashed": False,
            }
        elif current is not None and line.startswith("--hash="):
            current["hashed"] = True
        elif current is not None and line.startswith("#"):
            text = line.lstrip("#").strip().removeprefix("via").strip()
            if text:
                current["via"] = (*current["via"], text.split(" (")[0])  # type: ignore[misc]
    flush()
    return pins


def requirements(all_extras: bool) -> list[Requirement]:
    """pyproject.toml's runtime requirements, plus every extra's with `all_extras`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    extras = list(optional) if all_extras else []
    found: list[Requirement] = [Requirement(r) for r in project.get("dependencies", [])]
    todo, seen = extras, set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                todo += sorted(req.extras)
            else:
                found.append(req)
    return found


def check(lock: str, reqs: list[Requirement]) -> list[str]:
    path = ROOT / lock
    if not path.exists():
        return [f"{lock}: missing"]
    pins = read_lock(path)
    problems = [f"{lock}: {p.name}=={p.version} has no --hash" for p in pins if not p.hashed]
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    direct = {canonicalize_name(r.name) for r in reqs}
    for req in reqs:
        name = canonicalize_name(req.name)
        for env in TARGETS:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            chosen = [p for p in by_name.get(name, []) if p.applies(env)]
            where = f"Python {env['python_version']}"
            if not chosen:
                problems.append(f"{lock}: {req} is not pinned for {where}")
            elif not any(req.specifier.contains(p.version, prereleases=True) for p in chosen):
                shown = ", ".join(str(p.version) for p in chosen)
                problems.append(f"{lock}: {req} but {name}=={shown} is pinned for {where}")
    for pin in pins:
        asked = {v for v in pin.via if not v.startswith("-c ")}
        if asked == {PROJECT} and pin.name not in direct:
            problems.append(f"{lock}: {pin.name} is pinned for {PROJECT} but no longer required")
    return sorted(set(problems))


def check_consistent() -> list[str]:
    """Every runtime pin that applies to a target is in the dev lock at the same version."""
    runtime, dev = ROOT / RUNTIME_LOCK, ROOT / DEV_LOCK
    if not (runtime.exists() and dev.exists()):
        return []
    problems = []
    runtime_pins, dev_pins = read_lock(runtime), read_lock(dev)
    for env in TARGETS:
        in_dev = {p.name: p.version for p in dev_pins if p.applies(env)}
        for pin in runtime_pins:
            if pin.applies(env) and in_dev.get(pin.name) != pin.version:
                problems.append(
                    f"{DEV_LOCK}: {pin.name} is {in_dev.get(pin.name)} for Python "
                    f"{env['python_version']}, {RUNTIME_LOCK} has {pin.version}"
                )
    return problems


def main() -> int:
    problems = (
        check(RUNTIME_LOCK, requirements(all_extras=False))
        + check(DEV_LOCK, requirements(all_extras=True))
        + check_consistent()
    )
    for problem in problems:
        print(problem)
    if problems:
        print("the lock files disagree with pyproject.toml: run `bash tools/lock.sh`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
