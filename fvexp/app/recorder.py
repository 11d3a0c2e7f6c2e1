"""What the application tells a recorder about a run; this base records nothing (`tracking=none`).

The application calls these methods and never imports a tracking backend: the recorder is built
from the config's `_target_`, so MLflow (`fvexp.tracking.writer.MlflowTracker`) sits above this
layer and extends this class.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from fvexp.credentials import redact
from fvexp.errors import FvexpError


class Recorder:
    """Records nothing beyond the run folder; the interface every tracker has."""

    run_id: str | None = None
    ended = False  # whether `finish` ended the run in the store (it may have failed to write the rest)

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        """Begin a run called `name` with flat `params`, `tags`, and `files` (artifact name -> text)."""

    def log_step(self, step: int, value: float) -> None:
        """The objective after `step`."""

    def log_image(self, image: Image.Image, step: int) -> None:
        """An image along the way, shown by the UI's step slider."""

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Summary numbers of the finished run."""

    def log_file(self, path: Path, folder: str | None = None) -> None:
        """A file from the run folder."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags known only once the run is under way (the weights' checksum, say)."""

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED, keeping everything logged so far."""

    def reachable(self) -> bool:
        """Whether the store answers now: asked before ending a run in a store that failed during it."""
        return True


Described = Mapping[str, str] | Callable[[], Mapping[str, str]]
STOP_WAIT_S = 2  # how long a stopped run waits for its store: SIGTERM is followed by SIGKILL within seconds


class Guarded(Recorder):
    """A recorder whose failures never cost the run: tracking is a recorder, not a reason to stop.

    A store that cannot be opened at the start ends the job at once with one line when
    `on_error="fail"`, and otherwise is reported in one line and left out (`warn`, the default).
    A store that fails during the run is left alone after its first error, so that the
    render does not wait on it step after step; at the end the run is still ended there if the
    store is back, and one line says what could not be recorded. The run folder has it all.

    With `warn` the inner recorder is called from a thread of its own, in order, which begins once
    the first step's value arrives (or at `finish`): importing MLflow and creating the run take
    seconds of mostly Python work, which would slow the model's building and the first step if
    they ran beside them, so they run beside the later steps instead, and no step waits on a
    write. `finish` waits for everything to be written. With `fail` the start is made before any
    work, so that a store that cannot be used stops the job at once.
    """

    def __init__(self, inner: Recorder, on_error: str = "warn", where: str = "",
                 background: bool | None = None) -> None:
        self.inner: Recorder | None = inner
        self.on_error, self.where = on_error, where
        self.failure: str | None = None  # the first error during the run
        self.missed: dict[str, int] = {}  # what was not recorded after it, by kind
        self.background = on_error != "fail" if background is None else background
        self.calls: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self.worker: threading.Thread | None = None
        self.held = True  # calls wait in `calls` until the first step's value (see the class's docstring)

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.inner.run_id if self.inner else None

    def _submit(self, method: Callable[..., None], *args: Any) -> None:
        """Call `method` on the recorder's thread (once released), or here without `background`."""
        if not self.background:
            method(*args)
            return
        self.calls.put((method, args))
        if self.worker is None and not self.held:
            self.worker = threading.Thread(target=self._work, name="fvexp-recorder", daemon=True)
            self.worker.start()

    def _work(self) -> None:
        while (call := self.calls.get()) is not None:
            method, args = call
            try:
                method(*args)  # each method catches what the store raises as an Exception
            except BaseException as error:
                self.failure = self.failure or describe(error)

    def _join(self, timeout: float | None = None) -> bool:
        """Wait until every call so far has reached the store (at most `timeout` s); False if it took longer.

        A thread still waiting on the store after the timeout is left behind (it ends with the process).
        """
        self.held = False
        if self.worker is None:
            self._submit(lambda: None)  # starts the thread for the calls held so far
        if self.worker is not None:
            self.calls.put(None)
            self.worker.join(timeout)
            if self.worker.is_alive():
                return False
            self.worker = None
        return True

    def start(self, name: str | None, params: Mapping[str, Any], tags: Described,  # type: ignore[override]
              files: Described) -> None:
        """As `Recorder.start`, but `tags` and `files` may be functions that describe the run.

        They are called where the run is started (on the recorder's thread with `warn`), and not
        at all for the base recorder, which records nothing: describing the environment (git
        calls, a pip freeze) then never delays the first step.
        """
        self._submit(self._start, name, dict(params), *(d if callable(d) else dict(d) for d in (tags, files)))

    def _start(self, name: str | None, params: Mapping[str, Any], tags: Described, files: Described) -> None:
        if self.inner is None or type(self.inner) is Recorder:
            return
        try:
            self.inner.start(name, params, *(dict(d() if callable(d) else d) for d in (tags, files)))
        except Exception as error:
            reason = f"cannot record this run in {self.where or 'the tracking store'}: {describe(error)}"
            if self.inner.run_id is not None:  # created, then the start failed (a disk that filled): end it there
                try:
                    self.inner.finish("FAILED", reason)
                except Exception:
                    reason += f" (its run {self.inner.run_id} stays RUNNING there: `fvexp-orphans --mark` ends it)"
            if self.on_error == "fail":
                raise FvexpError(f"{reason} (tracking.on_error=fail; tracking.on_error=warn renders without "
                                 "tracking, tracking=none turns it off)") from None
            print(f"fvexp: warning: {reason}; rendering without tracking (tracking.on_error=fail stops instead)",
                  file=sys.stderr)
            self.inner = None

    def _call(self, kind: str, method: str, *args: Any) -> None:
        self._submit(self._call_now, kind, method, *args)

    def _call_now(self, kind: str, method: str, *args: Any) -> None:
        if self.inner is None:
            return
        if self.failure is not None:
            self.missed[kind] = self.missed.get(kind, 0) + 1
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as error:
            self.failure = describe(error)
            self.missed[kind] = self.missed.get(kind, 0) + 1

    def log_step(self, step: int, value: float) -> None:
        self.held = False
        self._call("objective values", "log_step", step, value)

    def log_image(self, image: Image.Image, step: int) -> None:
        self._call("images along the way", "log_image", image, step)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._call("metrics", "log_metrics", dict(metrics))  # a copy: the caller may add to its dict

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self._call("files", "log_file", path, folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("tags", "set_tags", dict(tags))

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run; a stopped run (KILLED: Ctrl-C, SIGTERM) waits at most `STOP_WAIT_S` for a store that hangs."""
        self._submit(self._finish, status, error)
        remote = self.where.startswith(("http:", "https:"))  # a local file store answers, if slowly under load
        if not self._join(STOP_WAIT_S if status == "KILLED" and remote else None):
            print(f"fvexp: warning: tracking in {self.where or 'the store'} did not answer within {STOP_WAIT_S} s "
                  "of the stop; the run may stay RUNNING there (`fvexp-orphans --mark` ends it). The run folder "
                  "holds everything", file=sys.stderr)

    def _finish(self, status: str, error: str | None = None) -> None:
        if self.inner is None:
            return
        if self.failure is not None and not self.inner.reachable():
            self._report(status, ended=False)
            return
        ended = True
        try:  # the store may be back: end the run there, saying it is incomplete
            if self.failure is not None:
                self.inner.set_tags({"fvexp.incomplete": f"tracking failed during the run: {self.failure}"})
            self.inner.finish(status, error)
        except Exception as late:
            self.failure = self.failure or describe(late)
            ended = self.inner.ended
        self._report(status, ended)

    def _report(self, status: str, ended: bool) -> None:
        """After a failure of the store: one line on what was not recorded and whether the run was ended there."""
        if self.failure is not None:
            lost = ", ".join(f"{kind} ({count})" for kind, count in self.missed.items()) or "nothing"
            state = f"the run was ended {status} there" if ended else (
                "the run could not be ended there (`fvexp-orphans --mark` ends it KILLED once the store works again, "
                f"with --store {self.where})" if self.where else "the run could not be ended there")
            print(f"fvexp: warning: tracking in {self.where or 'the store'} failed during the run ({self.failure}); "
                  f"not recorded: {lost}; {state}. The run folder holds everything", file=sys.stderr)


def describe(error: BaseException) -> str:
    """An exception as one short line, credentials redacted: the first line of its message that says what happened.

    SQLAlchemy puts a line on how the error was raised ("(raised as a result of Query-invoked autoflush; …)")
    before the database's own ("(sqlite3.OperationalError) database or disk is full"): that one is kept.
    """
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("(raised as a result of")]
    if isinstance(error, FvexpError) and lines:
        return redact(lines[0])
    return redact(f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__)
