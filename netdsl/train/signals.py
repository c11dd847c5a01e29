"""Stopping a training run by signal: Ctrl-C (SIGINT), SIGTERM and SIGHUP all save.

Why all three: SIGTERM is what ``timeout``, ``docker stop`` and batch schedulers send, SIGHUP
what a closed terminal sends; each used to kill a run without saving. A signal only sets a flag
that the training loop checks between optimizer steps, so the checkpoint it then writes never
holds half an update. The exit status is 128 + the signal number, as a shell reports it.
"""
from __future__ import annotations

import signal
import threading


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving; ``exit_status`` is 128 + the signal number
    (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), as shells report a killed process."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))


class StopFlag:
    """While active, the first Ctrl-C, SIGTERM or SIGHUP only records itself in ``signum`` (the
    loop stops at the next step boundary and saves); a second one interrupts at once, without
    saving. Outside the main thread it does nothing."""

    def __init__(self):
        self.signum = None
        self._old = {}

    @property
    def hit(self) -> bool:
        return self.signum is not None

    @hit.setter
    def hit(self, value: bool) -> None:       # tests and callers may stop the loop by hand
        self.signum = signal.SIGINT if value else None

    def _handle(self, signum, frame):
        if self.hit:   # the second: at once, with this signal's status (143 for SIGTERM)
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                # nohup'ed runs ignore SIGHUP on purpose: keep it ignored.
                if sig != signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
