"""Answers as the reading app and the simulation record them: checked, then committed one by one.

A reader reads their worklist in their own order, each case unaided first, then aided.
Only the next unanswered step of the next case can be answered: an answer for another
case, a repeated answer, or a value out of range is refused and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError

from explain.reader_study import schema


class Refused(Exception):
    """A request the study cannot take; `status` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    call: str
    confidence: int
    map_rating: str | None = None
    map_feature: str | None = None
    click_slice: int | None = None
    click_x: float | None = None
    click_y: float | None = None


@dataclass(frozen=True)
class Position:
    """Where a reader stands: the case to read (None when done), its step, and how far they are."""

    case: object  # a row of schema.cases, or None
    step: str | None
    number: int  # 1-based position of the case in the reader's worklist
    total: int


def parse_answer(step: str, form, features: list[str], slices: int) -> Answer:
    """An answer from a submitted form (strings), refused with 422 when a value is missing or out of range."""
    call = form.get("call")
    if call not in schema.CALLS:
        raise Refused(422, f"call must be one of {', '.join(schema.CALLS)}")
    confidence = _integer(form.get("confidence"), "confidence")
    if confidence not in schema.CONFIDENCE:
        raise Refused(422, "confidence must be 1 to 5")
    if step == "unaided":
        return Answer(call, confidence)
    rating = form.get("map_rating")
    if rating not in schema.RATINGS:
        raise Refused(422, f"the map's rating must be one of {', '.join(schema.RATINGS)}")
    feature = form.get("map_feature", "")
    if feature and feature not in features:
        raise Refused(422, f"feature must be one of the cohort's: {', '.join(features)}, or none")
    click_slice = _integer(form.get("click_slice"), "the lesion's slice (click on the image)")
    x, y = _fraction(form.get("click_x"), "click x"), _fraction(form.get("click_y"), "click y")
    if not 0 <= click_slice < slices:
        raise Refused(422, f"the lesion's slice must be 0 to {slices - 1}")
    return Answer(call, confidence, rating, feature, click_slice, x, y)


def position(db, reader_id: int) -> Position:
    """The reader's next unanswered step: unaided on a case never seen, aided once unaided is stored."""
    worklist = db.execute(select(schema.worklists.c.position, schema.cases).join(
        schema.cases, schema.cases.c.id == schema.worklists.c.case_id).where(
        schema.worklists.c.reader_id == reader_id).order_by(schema.worklists.c.position)).all()
    given = {(a.case_id, a.step) for a in db.execute(select(schema.answers.c.case_id, schema.answers.c.step).where(
        schema.answers.c.reader_id == reader_id))}
    for row in worklist:
        for step in schema.STEPS:
            if (row.id, step) not in given:
                return Position(row, step, row.position + 1, len(worklist))
    return Position(None, None, len(worklist), len(worklist))


def record(engine, reader_id: int, case_code: str, step: str, answer: Answer, simulated: bool = False) -> None:
    """Commit one answer, if it is the reader's next step on that case (else Refused, nothing written)."""
    with engine.begin() as db:
        now = position(db, reader_id)
        if now.case is None:
            raise Refused(409, "every case of this worklist is answered")
        if now.case.code != case_code:
            known = db.execute(select(schema.cases.c.id).join(
                schema.worklists, and_(schema.worklists.c.case_id == schema.cases.c.id,
                                       schema.worklists.c.reader_id == reader_id)).where(
                schema.cases.c.code == case_code)).first()
            if known is None:
                raise Refused(404, "no such case in this worklist")
            raise Refused(409, "that case is not the one to read now (answered already, or not yet reached)")
        if step != now.step:
            raise Refused(409, f"this case's {step} answer is already stored and cannot change" if step == "unaided"
                          else "the aided reading opens once the unaided answer is stored")
        try:
            db.execute(insert(schema.answers).values(reader_id=reader_id, case_id=now.case.id, step=step,
                                                     simulated=simulated, **answer.__dict__))
        except IntegrityError as error:  # the same answer from another request, a moment earlier
            raise Refused(409, "this answer is already stored") from error


def _integer(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Refused(422, f"{name} is missing or not a whole number") from None


def _fraction(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Refused(422, f"{name} is missing (click where the lesion is)") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise Refused(422, f"{name} must lie on the image")
    return number
