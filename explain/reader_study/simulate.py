"""Simulated readers, for the demo and the tests only: answers as the synthetic cohort's readers would give them.

Reader n reads as the cohort's n-th reader column (cycling when there are more readers).
Unaided: that column's call, sure (3-5) where the column is right and unsure (1-3) where
it is wrong, as readers are on the cases they get wrong. Aided: an unsure reader (1-2)
whom the model contradicts takes the model's call at confidence 3; agreement makes
them one step surer. The map is rated by where it lies: energy ratio on the lesion's
feature masks >= 1.5 "on the lesion", >= 1 "partly", else "off" (one rating in five
at random); the click falls near the centre of the lesion on its largest slice. Every
answer and the study are marked simulated, and so is everything made from them.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select, update

from explain.reader_study import schema
from explain.reader_study.answers import Answer, position, record
from explain.reader_study.material import decode_mask
from vfrac.errors import InputError

NOISE = 0.2  # share of map ratings given at random
CLICK_SD = 0.03  # of the image side


def simulate(engine, study_id: int, cohort_readers: dict, seed: int = 0) -> int:
    """Answer every step of every reader's worklist; `cohort_readers`: patient_id -> {reader column: call}."""
    columns = sorted({name for calls in cohort_readers.values() for name in calls})
    if not columns:
        raise InputError("--simulate needs a cohort with reader_ columns (the synthetic cohort has three)")
    with engine.begin() as db:
        db.execute(update(schema.studies).where(schema.studies.c.id == study_id).values(simulated=True))
        readers = db.execute(select(schema.readers).where(schema.readers.c.study_id == study_id)
                             .order_by(schema.readers.c.number)).all()
    answered = 0
    for reader in readers:
        rng = np.random.default_rng([seed, reader.number])
        column = columns[(reader.number - 1) % len(columns)]
        while True:
            with engine.connect() as db:
                now = position(db, reader.id)
                if now.case is None:
                    break
                lesion = _lesion_centre(db, now.case.id) if now.step == "aided" else None
            unaided = _unaided(cohort_readers[now.case.patient_id][column], now.case.label, rng)
            answer = unaided if now.step == "unaided" else _aided(engine, reader.id, now.case, lesion, rng)
            record(engine, reader.id, now.case.code, now.step, answer, simulated=True)
            answered += 1
    return answered


def _unaided(call: str, label: str, rng) -> Answer:
    right = call == label
    return Answer(call, int(rng.integers(3, 6) if right else rng.integers(1, 4)))


def _aided(engine, reader_id: int, case, lesion, rng) -> Answer:
    with engine.connect() as db:
        first = db.execute(select(schema.answers).where(
            (schema.answers.c.reader_id == reader_id) & (schema.answers.c.case_id == case.id)
            & (schema.answers.c.step == "unaided"))).one()
    call, confidence = first.call, first.confidence
    if case.call != call and confidence <= 2:
        call, confidence = case.call, 3
    elif case.call == call:
        confidence = min(5, confidence + 1)
    ratio = case.map_energy_ratio
    rating = ("on the lesion" if ratio is not None and ratio >= 1.5 else
              "partly" if ratio is not None and ratio >= 1.0 else "off the lesion")
    if rng.random() < NOISE:
        rating = schema.RATINGS[int(rng.integers(len(schema.RATINGS)))]
    slice_index, (y, x) = lesion if lesion else (case.slices // 2, (0.5, 0.5))
    x, y = (float(np.clip(v + rng.normal(0.0, CLICK_SD), 0.0, 1.0)) for v in (x, y))
    return Answer(call, confidence, rating, "", slice_index, x, y)


def _lesion_centre(db, case_id: int):
    """(slice index, (row, column) as fractions of the side) of the lesion's largest slice, or None."""
    masks = db.execute(select(schema.images.c.slice_index, schema.images.c.png).where(
        (schema.images.c.case_id == case_id) & (schema.images.c.kind == "lesion"))).all()
    best = max(((row.slice_index, decode_mask(row.png)) for row in masks), key=lambda m: m[1].sum(), default=None)
    if best is None or not best[1].any():
        return None
    rows, cols = np.nonzero(best[1])
    side = best[1].shape[0]
    return best[0], ((rows.mean() + 0.5) / side, (cols.mean() + 0.5) / side)
