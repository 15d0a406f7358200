"""Check an Apptainer definition file without apptainer (and without pulling its base).

    python containers/defcheck.py Apptainerfile containers/cpu.def

A port of the rules of apptainer's own parser (apptainer 1.4,
pkg/build/types/parser/deffile.go: its header keywords, its section names, how it splits a
file into a header and sections), plus what a build would fail on later: a bootstrap agent
apptainer does not have, a header the agent needs but lacks, a %files source missing from
the checkout (paths are relative to the directory the build runs in: the checkout's root).
It complements, not replaces, a parse by apptainer itself (tests/test_containers.py does
both where apptainer is available).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from pathlib import Path

# deffile.go: validSections, appSections, validHeaders ("otherurl&n" is otherurl0, otherurl1, ...).
SECTIONS = {"help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test",
            "startscript", "arguments"}
APP_SECTIONS = {"appinstall", "applabels", "appfiles", "appenv", "apptest", "apphelp", "apprun", "appstart"}
HEADERS = {"bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include", "library",
           "registry", "namespace", "stage", "product", "user", "regcode", "productpgp", "registerurl",
           "modules", "fingerprints", "confurl", "setopt"}
# Bootstrap agents apptainer 1.4 builds from, and the headers each one cannot do without.
AGENTS = {
    "docker": {"from"}, "docker-archive": {"from"}, "docker-daemon": {"from"}, "oci": {"from"},
    "oci-archive": {"from"}, "library": {"from"}, "oras": {"from"}, "shub": {"from"},
    "localimage": {"from"}, "debootstrap": {"osversion", "mirrorurl"}, "yum": {"mirrorurl"},
    "dnf": {"mirrorurl"}, "zypper": {"mirrorurl"}, "arch": set(), "busybox": {"mirrorurl"}, "scratch": set(),
}


@dataclasses.dataclass
class Definition:
    header: dict[str, str]
    sections: dict[str, list[str]]  # name (lower case) -> bodies, in file order
    files: list[tuple[str, str]]  # %files (source, destination)
    labels: dict[str, str]


class DefinitionError(ValueError):
    pass


def parse(text: str) -> Definition:
    """Split like apptainer: everything before the first line whose first word starts with
    '%' is the header; each such line starts a section."""
    header_lines: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            name = words[0][1:].lower()
            if name in APP_SECTIONS:
                if len(words) < 2:
                    raise DefinitionError(f"app section %{name} names no app")
                name = f"{name} {words[1]}"
            elif name not in SECTIONS:
                raise DefinitionError(f"invalid section(s) specified: {name}")
            current = []
            sections.setdefault(name, []).append(current)  # type: ignore[arg-type]
            continue
        (header_lines if current is None else current).append(line)
    header = _header(header_lines)
    bodies = {k: ["\n".join(b) for b in v] for k, v in sections.items()}
    files = [_files_entry(line) for body in bodies.get("files", []) for line in body.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    labels = {}
    for body in bodies.get("labels", []):
        for line in body.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                labels[key] = value.strip()
    return Definition(header, bodies, files, labels)


def _header(lines: list[str]) -> dict[str, str]:
    header: dict[str, str] = {}
    key_cont = val_cont = ""
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            if key_cont:
                header[key_cont], key_cont, val_cont = val_cont, "", ""
            continue
        trimmed = line.split("#")[0]
        if not val_cont:
            if ":" not in trimmed:
                raise DefinitionError(f"failed to parse deffile header: header key {trimmed} had no val")
            key, value = trimmed.split(":", 1)
            key, value = key.strip().lower(), value.strip()
        else:
            key, value, key_cont, val_cont = key_cont, val_cont + trimmed.strip(), "", ""
        if value.endswith("\\"):
            key_cont, val_cont = key, value[:-1]
            continue
        if key not in HEADERS and not (re.fullmatch(r"otherurl\d+", key)):
            raise DefinitionError(f"failed to parse deffile header: invalid header keyword found: {key}")
        header[key] = value
    return header


def _files_entry(line: str) -> tuple[str, str]:
    parts = shlex.split(line)
    return parts[0], parts[1] if len(parts) > 1 else parts[0]


def check(path: Path, root: Path) -> Definition:
    """Parse ``path`` and check what a build from ``root`` would need; raise DefinitionError."""
    d = parse(path.read_text())
    agent = d.header.get("bootstrap")
    if agent is None:
        raise DefinitionError("no Bootstrap: header")
    if agent not in AGENTS:
        raise DefinitionError(f"unknown bootstrap agent {agent!r} (apptainer has {', '.join(sorted(AGENTS))})")
    missing = AGENTS[agent] - set(d.header)
    if missing:
        raise DefinitionError(f"Bootstrap: {agent} needs {', '.join(sorted(missing))}")
    for src, _ in d.files:
        if not list(root.glob(src)):
            raise DefinitionError(f"%files source {src!r} does not exist under {root}")
    return d


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    status = 0
    for name in argv or [str(root / "Apptainerfile"), str(root / "containers" / "cpu.def")]:
        try:
            d = check(Path(name), root)
        except (DefinitionError, OSError) as e:
            print(f"{name}: {e}")
            status = 1
        else:
            print(f"{name}: ok (Bootstrap: {d.header['bootstrap']}, sections: {', '.join(d.sections)})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
