"""Peak memory of a run: anonymous RSS (RssAnon in /proc/self/status: the process's own pages, not the file-backed
pages of memory-mapped weights) sampled in a thread, above the interpreter's baseline at start; and VmHWM."""

from __future__ import annotations

import threading
from pathlib import Path


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.baseline_mb = _status_mb("RssAnon")
        self.peak_mb = self.baseline_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))
        return {"peak_anon_mb": round(self.peak_mb - self.baseline_mb, 1), "baseline_anon_mb": round(self.baseline_mb, 1),
                "peak_rss_mb": round(_status_mb("VmHWM"), 1)}
