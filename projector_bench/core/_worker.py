"""What a training worker process runs first, before it imports torch or the rest of the package (seconds of
work, minutes on a machine short of memory): a worker whose parent dies meanwhile exits within a second, not once
its imports are done. The standard library and tqdm only."""
from __future__ import annotations

import os
import signal
import threading
import time


def _exit_with(parent: int) -> None:  # a killed parent (SIGKILL, the OOM killer) cannot end its workers
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def init() -> None:
    """A training worker ignores Ctrl-C (its parent ends it), exits within a second of its parent's death and gives
    tqdm a thread lock: tqdm's default multiprocessing lock is a semaphore a terminated worker leaves behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True, name="exit-with-parent").start()
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())
