"""Progress: bars on a terminal, one log line per 10 % elsewhere (no carriage returns in a log file)."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

from medseg import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("MEDSEG_PROGRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert progress.use_bars(_Terminal()) and not progress.use_bars(io.StringIO())
    monkeypatch.setenv("MEDSEG_PROGRESS", "lines")
    assert not progress.use_bars(_Terminal())


def test_line_progress_logs_every_tenth(monkeypatch, caplog):
    monkeypatch.setenv("MEDSEG_PROGRESS", "lines")
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        bar = progress.progress_bar(total=200, desc="work", unit="case")
        for _ in range(200):
            bar.update(1)
            bar.set_postfix(loss="0.5")
        bar.close()
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"work: {p}%" for p in range(10, 101, 10)]
        assert "loss 0.5" in caplog.records[-1].getMessage()
        caplog.clear()
        assert list(progress.progress_bar(range(3), desc="it")) == [0, 1, 2]
        assert len(caplog.records) == 3  # 3 items: every item is another 10 %
        caplog.clear()
        for _ in progress.progress_bar(range(50), desc="slices", leave=False):
            pass
        for _ in progress.progress_bar(range(50), desc="off", disable=True):
            pass
        assert caplog.records == []


def test_a_redirected_log_has_lines_not_bars(tmp_path):
    """`medseg synth` with stderr to a file: a handful of lines, no carriage returns."""
    log_file = tmp_path / "log.txt"
    with open(log_file, "w") as stderr:
        code = subprocess.call([sys.executable, "-m", "medseg", "synth", str(tmp_path / "cohort"), "--no-preview", "--cases",
                                "2", "--size", "small"], stderr=stderr, stdout=stderr)
    text = log_file.read_text()
    assert code == 0, text
    assert "\r" not in text and "synth small: 100%" in text and len(text.splitlines()) < 20
