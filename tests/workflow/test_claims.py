"""Claims and trial positions in the Optuna storage: one process per unit, dead owners freed, re-runs identical."""

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from experiments import claims
from experiments.claims import OWNER_ATTR, Claims, fail_dead, new_trial, owner_is_dead, this_process
from experiments.stores import PRIVATE_CALLS, open_storage
from experiments.tuning import DEFAULTS, POSITION_ATTR, claim_trial, fold_study, suggest


@pytest.fixture
def storage(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return open_storage(f"sqlite:///{tmp_path}/optuna.db")


def dead_process() -> str:
    """The owner string of a process of this machine that has exited."""
    code = "from experiments.claims import this_process; print(this_process())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_owners_on_this_machine_are_alive_until_their_process_ends():
    assert not owner_is_dead(this_process())
    assert owner_is_dead(dead_process())
    assert not owner_is_dead("elsewhere:1:1")  # another machine: its heartbeats decide
    host, pid, ticks = this_process().split(":")
    assert owner_is_dead(f"{host}:{pid}:{int(ticks) + 1}")  # the same pid, another process


def test_a_unit_is_held_by_one_process_at_a_time(storage):
    ours, theirs = Claims(storage, "k"), Claims(storage, "k")
    with ours.hold("fold0") as first:
        with theirs.hold("fold0") as second, theirs.hold("fold1") as other_unit:
            assert first and not second and other_unit
    with theirs.hold("fold0") as after:
        assert after
    states = [t.state for t in ours.study.get_trials()]
    assert TrialState.RUNNING not in states


def test_a_unit_whose_owner_died_is_free_again(storage):
    ours = Claims(storage, "k")
    held, _ = new_trial(storage, ours.study, {claims.UNIT_ATTR: "pooled"})
    storage.set_trial_user_attr(held, OWNER_ATTR, dead_process())
    with ours.hold("pooled") as mine:
        assert mine
    assert storage.get_trial(held).state == TrialState.FAIL


def test_once_does_the_work_once_and_waits_for_a_live_owner(storage, monkeypatch):
    ours, theirs = Claims(storage, "k"), Claims(storage, "k")
    done, calls = [], []

    def work():
        calls.append(1)
        done.append(1)

    assert ours.once("report", lambda: bool(done), work)
    assert ours.once("report", lambda: bool(done), work)
    assert calls == [1]
    with theirs.hold("review"):
        assert not ours.once("review", lambda: False, work, wait=False)
    monkeypatch.setattr(claims, "POLL_SECONDS", 0)
    failures = iter([RuntimeError("first owner failed"), None])

    def flaky():
        error = next(failures)
        if error:
            raise error
        done.append("review")

    with pytest.raises(RuntimeError):
        ours.once("review", lambda: "review" in done, flaky)
    assert theirs.once("review", lambda: "review" in done, flaky)  # a failed owner leaves the unit free


def test_trials_take_positions_within_the_budget_and_the_first_is_the_defaults(storage):
    study = fold_study(storage, "fold", pruner="median")
    trial, _, position = claim_trial(storage, study, budget=2, seed=7)
    params = suggest(trial, pretrained=False)
    assert position == 0 and params == DEFAULTS
    study.tell(trial, 0.7)
    _, second, position = claim_trial(storage, study, budget=2, seed=7)
    assert position == 1
    assert claim_trial(storage, study, budget=2, seed=7) is None  # the running trial counts against the budget
    assert storage.get_trial(second).user_attrs[POSITION_ATTR] == 1


def test_a_trial_killed_with_its_process_is_rerun_with_the_same_settings(storage):
    study = fold_study(storage, "fold", pruner="median")
    first, _, _ = claim_trial(storage, study, budget=3, seed=7)
    suggest(first, pretrained=False)
    study.tell(first, 0.7)
    killed, killed_id, position = claim_trial(storage, study, budget=3, seed=7)
    drawn = suggest(killed, pretrained=False)
    assert drawn != DEFAULTS
    storage.set_trial_user_attr(killed_id, OWNER_ATTR, dead_process())
    assert claim_trial(storage, study, budget=2, seed=7) is None  # still counted while thought alive
    assert [t.number for t in fail_dead(storage, study)] == [killed.number]
    again, _, again_position = claim_trial(storage, study, budget=3, seed=7)
    assert again_position == position == 1 and again.number != killed.number
    assert suggest(again, pretrained=False) == drawn


def test_no_private_name_of_optuna_mlflow_or_keras_is_used():
    """Their private names change without notice: the project reaches them only through public APIs.

    An attribute with a leading underscore, read off anything but self or cls, must be one the project defines;
    a module path with a private part must not be imported from those libraries. The one exception: the
    private methods Optuna's own cache calls on an RDB storage, which the retrying storage must cover too
    (tests/workflow/test_stores.py reads them from Optuna's source, so an upgrade that adds one fails there).
    """
    root = Path(__file__).resolve().parents[2]
    files = [p for folder in ("experiments", "explain", "vfrac", "bench", "tests", "examples")
             for p in (root / folder).rglob("*.py")]
    text = {path: path.read_text() for path in files}
    ours = {name for source in text.values() for name in re.findall(r"(?:def |class |self\.|cls\.|^\s*)(_[a-z]\w*)",
                                                                    source, re.M)}
    used = {(path.name, name) for path, source in text.items()
            for name in re.findall(r"(?<!\bself)(?<!\bcls)(?<![\w.])\w+(?:\.\w+)*\.(_[a-z]\w*)", source)}
    allowed = ours | {"_asdict", "_replace"} | set(PRIVATE_CALLS)  # namedtuple methods are public
    assert {(file, name) for file, name in used if name not in allowed} == {("test_stores.py", "_cached_storage")}
    imports = [(path.name, line) for path, source in text.items() for line in source.splitlines()
               if re.match(r"\s*(from|import) (optuna|mlflow|keras|tensorflow|tf_keras_vis)\S*\._", line)]
    assert imports == []
