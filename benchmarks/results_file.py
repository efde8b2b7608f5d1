"""One section per benchmark in benchmarks/RESULTS.md: each script replaces its own section and keeps the others."""
from __future__ import annotations

from pathlib import Path

from medseg.io import write_text


def write_section(path: "str | Path", heading: str, section: str) -> Path:
    """Replace the Markdown section that starts with ``heading`` (a ``## ...`` line) by ``section``, or append it.

    The section ends where the next ``## `` heading starts. The file is written atomically.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = section.rstrip("\n") + "\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        rest = text[end + 1:] if end >= 0 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    return write_text(path, text)


def publish(section: str, heading: str, path: "str | Path | None") -> None:
    """Print a benchmark's section and, when ``path`` is given, (re)write it there (:func:`write_section`)."""
    print(section)
    if path:
        write_section(path, heading, section)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one), for the machine line of a section."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
