"""One process per unit of work when several share a run: claims kept in the Optuna storage.

A unit (a tuning trial, a fold's final model, the pooled results, the review, the report)
is claimed by adding a RUNNING trial that names its unit and owner in one atomic insert;
the unit belongs to the lowest-numbered live claim, so two processes never both win. A
claim lives while its process sends heartbeats. A dead owner on this machine is seen at
once (its process is gone); one on another machine when its heartbeats stop for the
storage's heartbeat timeout (`--heartbeat-timeout`). Dead claims are failed, and their
unit is free again. Only Optuna's public storage API is used: a trial is named to the
storage by its study's id and its number.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

OWNER_ATTR = "vfrac.owner"
UNIT_ATTR = "vfrac.unit"
POLL_SECONDS = 5


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def this_machine() -> str:
    """The host and its pid namespace: where a pid names the same process (containers share host names)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def this_process() -> str:
    return f"{this_machine()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_is_dead(owner: str) -> bool:
    """True only when the owner ran on this machine and is gone (or its pid is another process now)."""
    host, _, rest = owner.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != this_machine() or not pid.isdigit() or not ticks:
        return False  # elsewhere: its heartbeats tell
    return _start_ticks(int(pid)) != ticks


def trial_id(storage, study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial `number`."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def fail_dead(storage, study: optuna.Study) -> list[FrozenTrial]:
    """Fail the study's RUNNING trials whose heartbeat is stale or whose owner died; returns the latter."""
    optuna.storages.fail_stale_trials(study)
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if owner_is_dead(t.user_attrs.get(OWNER_ATTR, ""))]
    failed = []
    for trial in dead:
        with contextlib.suppress(UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id(storage, study, trial.number), TrialState.FAIL):
                failed.append(trial)
    return failed


def new_trial(storage, study: optuna.Study, user_attrs: dict,
              fixed_params: dict | None = None) -> tuple[int, FrozenTrial]:
    """A RUNNING trial owned by this process, its attributes written with it, its first heartbeat sent: (id, trial)."""
    template = create_trial(state=TrialState.RUNNING, user_attrs={OWNER_ATTR: this_process(), **user_attrs},
                            system_attrs={"fixed_params": fixed_params} if fixed_params else None)
    created = storage.create_new_trial(storage.get_study_id_from_name(study.study_name), template_trial=template)
    with contextlib.suppress(Exception):  # the heartbeat thread sends it again
        storage.record_heartbeat(created)
    return created, storage.get_trial(created)


@contextlib.contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat at the storage's interval while the block runs."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or 30

    def beat():
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup must not kill the work
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Claims:
    """The claims of one CV run, in one study of the Optuna storage."""

    def __init__(self, storage, run_key: str):
        self.storage = storage
        self.waited = 0.0  # seconds this process spent waiting for units other processes held
        self.study = optuna.create_study(study_name=f"vfrac-{run_key}-claims", storage=storage,
                                         load_if_exists=True)

    @contextlib.contextmanager
    def hold(self, unit: str) -> Iterator[bool]:
        """Yield True when this process holds `unit` for the block, False when a live process does."""
        storage = self.storage
        fail_dead(storage, self.study)
        mine_id, mine = new_trial(storage, self.study, {UNIT_ATTR: unit})
        live = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get(UNIT_ATTR) == unit]
        if min(t.number for t in live) != mine.number:
            storage.set_trial_state_values(mine_id, TrialState.FAIL)
            yield False
            return
        state = TrialState.FAIL
        try:
            with heartbeat(storage, mine_id):
                yield True
            state = TrialState.COMPLETE
        finally:
            storage.set_trial_state_values(mine_id, state, [0.0] if state == TrialState.COMPLETE else None)

    def wait(self) -> None:
        """Sleep a polling interval while other processes work, counted in `waited`."""
        time.sleep(POLL_SECONDS)
        self.waited += POLL_SECONDS

    def once(self, unit: str, done: Callable[[], bool], work: Callable[[], None], wait: bool = True) -> bool:
        """Do `work` for `unit` unless `done()`; if another process holds it, wait (or return False)."""
        while not done():
            with self.hold(unit) as mine:
                if mine:
                    if not done():
                        work()
                    return True
            if not wait:
                return False
            self.wait()
        return True
