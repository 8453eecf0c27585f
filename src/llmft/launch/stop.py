"""Stop requests from a scheduler: SIGTERM and SIGUSR1, recorded from the start of ``llmft finetune``.

Slurm warns a job with USR1 some minutes before its time limit (``--signal``), and a preempting
scheduler sends SIGTERM. Loading a large model can take longer than that warning, so the request is
recorded as soon as the command starts (before any import of torch), not only once training runs:
the trainer reads it before its first step and after every step (:mod:`llmft.train.trainer`), and a
run that was asked to stop before it trained anything exits with the preemption status at once.

Only the standard library is imported here, so that the CLI can listen before its heavy imports.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# The exit status of a run stopped by SIGTERM or SIGUSR1 (EX_TEMPFAIL: "try again later"); a scheduler
# requeues on it and the next run continues from the latest checkpoint with --resume auto.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped on a signal after a step; ``checkpoint`` holds the state to resume from.

    ``trained``: False when the signal came before the first step of this run (while the model was
    loading): nothing was trained and nothing saved, so the latest checkpoint, if any, is unchanged.
    """

    def __init__(self, signal_name: str, step: int, checkpoint, trained: bool = True) -> None:
        self.signal_name, self.step, self.checkpoint, self.trained = signal_name, step, checkpoint, trained
        if not trained:
            super().__init__(
                f"stopped by {signal_name} before training started (at step {step}); nothing trained or saved"
            )
            return
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (none configured)"
        super().__init__(f"stopped by {signal_name} after step {step}; {where}")


_requested: str | None = None  # the first stop signal received while listening
_depth = 0  # nested listen() scopes: only the outermost installs and restores the handlers


def requested() -> str | None:
    """The name of the first stop signal received (``SIGUSR1``, ``SIGTERM``), or None."""
    return _requested


def _record(signum: int, frame) -> None:
    global _requested
    if _requested is None:  # a repeated signal (a scheduler that warns again) changes nothing
        _requested = signal.Signals(signum).name
        log.warning(
            "%s received: stopping after the current optimizer step with a checkpoint "
            "(at once if training has not started)",
            _requested,
        )


@contextlib.contextmanager
def listen() -> Iterator[None]:
    """Record SIGTERM and SIGUSR1 inside this scope instead of dying of them (or ignoring them: a
    launcher such as llmft.sbatch starts torchrun with USR1 ignored, and its processes inherit that).

    Scopes nest (the CLI, :func:`llmft.finetune.finetune` and the trainer each open one): the
    outermost installs the handlers, clears any earlier request, and restores the previous handlers
    on exit. Outside the main thread Python cannot install handlers, and nothing is recorded.
    """
    global _depth, _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _depth == 0:
        _requested = None
        previous = {sig: signal.signal(sig, _record) for sig in STOP_SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if _depth == 0:
            _requested = None
