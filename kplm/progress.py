"""A one-line progress display on stderr, for the long steps that read bytes (learning a
vocabulary, ``kplm data prepare``). TensorFlow-free."""
import sys
import time


class ByteProgress:
    """Bytes done, rate, percent and time left when the total is known; redrawn at most twice a
    second on one line of stderr. ``enabled=False`` counts silently.

    Example:
    >>> meter = ByteProgress(2_000_000, enabled=False)
    >>> meter.add(500_000)
    500000
    """

    def __init__(self, total, enabled=True, label="tokenizer: read"):
        self.total, self.enabled, self.label = total, enabled, label
        self.done, self.start, self.last = 0, time.time(), 0

    def add(self, n):
        self.done += int(n)
        now = time.time()
        if self.enabled and now - self.last > 0.5:
            self.last = now
            self._show()
        return self.done

    def _show(self, suffix=""):
        mb = self.done / 1e6
        seconds = max(time.time() - self.start, 1e-9)
        rate = mb / seconds
        pct = eta = ""
        if self.total:
            pct = f" {100 * min(self.done / self.total, 1.0):5.1f}%"
            if self.done and not suffix:
                left = max(self.total - self.done, 0) / (self.done / seconds)
                eta = f", {int(left // 60)}:{int(left % 60):02d} left"
        sys.stderr.write(f"\r{self.label}{pct} {mb:8.1f} MB ({rate:5.1f} MB/s{eta}){suffix}")
        sys.stderr.flush()

    def finish(self, message):
        if self.enabled:
            self._show(f", {message} in {time.time() - self.start:.1f} s\n")
