"""A process tree watched from outside: which processes a command started, and which of them are still alive
(tests of "no child outlives the CLI")."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


class Tracker:
    """Every descendant of ``root`` seen while it ran (pid with its start time, so a reused pid is not mistaken
    for it)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, tuple[int, str]] = {}

    def scan(self) -> None:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _stat(int(entry))
                if info is not None:
                    parents[int(entry)] = info[0]
        for pid, (start, comm) in list(self.seen.items()):  # a child seen between fork and exec showed its
            info = _stat(pid)                                 # parent's command line: read it again
            if info is not None and info[2] == start and comm != (now := _comm(pid)):
                self.seen[pid] = (start, now)
        family = {self.root} | set(self.seen)
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in family and pid not in family:
                    family.add(pid)
                    info = _stat(pid)
                    if info is not None:
                        self.seen[pid] = (info[2], _comm(pid))
                    grew = True

    def alive(self) -> list[str]:
        out = []
        for pid, (start, comm) in self.seen.items():
            info = _stat(pid)
            if info is not None and info[2] == start:
                out.append(f"{pid} {comm}")
        return out

    def wait_gone(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.alive()
