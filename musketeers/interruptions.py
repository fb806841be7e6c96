"""Runs that stop before their last step: preemption and a full disk. Each stop leaves the last complete
checkpoint intact, says what happened in one line, and exits with a status that tells a scheduler what to
do next. (What survives which fault, and the test that shows it: docs/faults.md, "What survives what".)

Preemption. A scheduler preempts a job with SIGTERM and, after a grace period, SIGKILL (SLURM's
GraceTime, Kubernetes' terminationGracePeriodSeconds); Ctrl-C sends SIGINT. On the first of either,
training finishes the optimizer step in flight (its logging, and its held-out evaluation when one is
due), writes a complete checkpoint-N/ of that step through transformers' own flow control
(control.should_save, control.should_training_stop), and raises `Preempted`, whose message is the one
line `musketeers train` prints before it exits with status 75. 75 is EX_TEMPFAIL of sysexits.h
("temporary failure; the user is invited to retry"): a status of its own, which a scheduler can be told
to requeue on, unlike 143 (128 + SIGTERM, a process killed before it could save) or 1 (a crash a requeue
would repeat). SLURM: RequeueExit=75 in slurm.conf, or `[ $? -eq 75 ] && scontrol requeue
$SLURM_JOB_ID` in the batch script; LSF: `bsub -Q 75`; a Kubernetes Job: a podFailurePolicy rule
{action: Ignore, onExitCodes: {operator: In, values: [75]}}. The requeued job runs `musketeers train
--resume RUN_DIR`; a sweep retries the run itself (its Ray task retries on Preempted). A second SIGINT
aborts at once (KeyboardInterrupt); a second SIGTERM is ignored, as srun, torchrun and shell wrappers
forward the scheduler's one. A signal while models are still loading stops the run at once with the
same status: there is no step to save yet.

Full disk. A write that fails with ENOSPC (or EDQUOT, a quota) while a checkpoint is saved: the folder
being written is removed (it never got its manifest, so nothing would have read it), the previous
complete checkpoint is untouched, and the run raises `DiskFull`, one line naming the path, the free
space and the checkpoint --resume will use; `musketeers train` exits 74 (EX_IOERR), not 75: a requeue
would find the same full disk. Any other write of the run that fails so (a metrics row, an expert-state
shard, final/) stops it the same way. torch.save reports a full disk as a RuntimeError without errno,
so a failed save also counts as a full disk when less space is left than the last checkpoint took.

It may import errors and rundir; the trainer, train and sweep use it.
"""

from __future__ import annotations

import errno
import logging
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from musketeers.errors import MusketeersError
from musketeers.rundir import MANIFEST_FILE, last_checkpoint, write_manifest

log = logging.getLogger("musketeers.train")

REQUEUE_EXIT = 75  # EX_TEMPFAIL: preempted after saving; requeue and --resume
DISK_FULL_EXIT = 74  # EX_IOERR: a write failed for want of space; free some, then --resume
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries word it when they drop the errno (safetensors' Rust I/O error, Ray's remote tracebacks)
DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
MIN_FREE = 1 << 20  # below this, a failed checkpoint save is a full disk whatever the error says


class RunStopped(MusketeersError):
    """A run that stopped before its last step on purpose: the message is the one line to print."""

    exit_code = 1


class Preempted(RunStopped):
    exit_code = REQUEUE_EXIT


class DiskFull(RunStopped):
    exit_code = DISK_FULL_EXIT


# ----------------------------------------------------------------------------- preemption


class PreemptionCallback(TrainerCallback):
    """Turns the first SIGTERM / SIGINT into "save the step in flight, then stop" (handlers live only
    while `handling_signals` is open, around loading, training and the final save)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None  # the first signal's number
        self.phase = "loading"  # loading -> training -> finishing

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @contextmanager
    def handling_signals(self):
        if threading.current_thread() is not threading.main_thread():  # Python sets handlers there only
            yield self
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        self._install()
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
            if self.phase == "loading":
                raise Preempted(f"preempted by {self.signal_name} before training started: nothing to save; "
                                f"exit status {REQUEUE_EXIT} (requeue)")
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint

    def _stop(self, control, save: bool = True):
        if self.received is not None and self.phase == "training":
            control.should_training_stop = True
            control.should_save = control.should_save or save

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                signal.signal(s, self._handle)

    def on_train_begin(self, args, state, control, **kwargs):
        # again: ray.init (Ray experts start while the run loads) installs Ray's own SIGTERM handler, which aborts
        self._install()
        self.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_log = True  # TRL's metrics of the step are not in the checkpoint: log them now
        self._stop(control)

    def on_log(self, args, state, control, **kwargs):  # the signal came while the step logged...
        self._stop(control)

    def on_evaluate(self, args, state, control, **kwargs):  # ...or evaluated: the save comes next
        self._stop(control)

    def on_save(self, args, state, control, **kwargs):  # ...or saved: nothing more to save
        self._stop(control, save=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.phase = "finishing"

    def stopped_early(self, state) -> bool:
        return self.received is not None and state.global_step < state.max_steps

    def preempted(self, run_dir: Path, state) -> Preempted:
        checkpoint = last_checkpoint(run_dir)
        return Preempted(f"preempted by {self.signal_name}: stopped after step {state.global_step} of {state.max_steps} "
                         f"and saved {checkpoint}; exit status {REQUEUE_EXIT} (requeue); "
                         f"`musketeers train --resume {run_dir}` continues from there")


# ----------------------------------------------------------------------------- full disk


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    """The error, or one it came from, is a write refused for want of space (or quota)."""
    return any((isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or any(t in str(e) for t in DISK_FULL_TEXTS)
               for e in _chain(error))


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def disk_full(error: BaseException, run_dir: Path, writing: Path | None = None) -> DiskFull:
    """The one line a full disk ends a run with: what failed, the space left, what --resume will use."""
    path = next((e.filename for e in _chain(error) if isinstance(e, OSError) and e.filename), None) or writing or run_dir
    reason = next((e.strerror for e in _chain(error) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS), None)
    reason = reason or " ".join(str(error).split())[:120] + ("" if is_disk_full(error) else ", with less space left than a checkpoint takes")
    last = last_checkpoint(run_dir)
    kept = f"{last} is intact and is where --resume continues" if last else "no checkpoint was complete yet"
    return DiskFull(f"disk full: writing {path} failed ({reason}); {_size(free_bytes(Path(path)))} free on that file "
                    f"system; the run stopped, {kept}; free space, then `musketeers train --resume {run_dir}`")


def _folder_bytes(folder: Path | None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else 0


@contextmanager
def sealed_checkpoint(folder: Path, run_dir: Path):
    """Around the save of checkpoint `folder` (checkpoint-N/ or final/): a manifest left from before goes
    first, the new one is written after every file (rundir.write_manifest). If the disk fills on the way,
    the half-written folder is removed and DiskFull is raised; other errors pass unchanged."""
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    try:
        yield
        write_manifest(folder)
    except Exception as error:
        needed = max(MIN_FREE, _folder_bytes(last_checkpoint(run_dir)))
        if not is_disk_full(error) and free_bytes(folder) >= needed:
            raise
        stopped = disk_full(error, run_dir, folder)  # the space left when the write failed
        shutil.rmtree(folder, ignore_errors=True)
        raise stopped from error
