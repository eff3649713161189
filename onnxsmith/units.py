"""Small shared helpers for machine facts and figures, so every report, table and check says them the same way."""

from __future__ import annotations

import platform


def machine_arch() -> str:
    """This machine's CPU architecture as target files name it: ``x86_64`` or ``aarch64`` (else as reported)."""
    arch = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def fmt_bytes(value: int | float | None) -> str:
    """A size in binary units (``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``); ``–`` when unknown."""
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
