"""A small reader study written straight into a database, for tests that need no CV run: made-up cases with
tiny images, readers with known tokens, and answers given as a test chooses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert

from explain.reader_study import schema
from explain.reader_study.answers import Answer, record
from explain.reader_study.design import token_digest
from explain.reader_study.material import png

SIDE = 8
FEATURES = ("soft_tissue_mass", "bone_destruction")


@dataclass
class MadeStudy:
    engine: object
    study_id: int
    tokens: list  # reader number - 1 -> token
    reader_ids: list
    codes: list  # case position -> code
    case_ids: list
    orders: list  # reader number - 1 -> case positions in reading order


def make_study(url: str, labels, calls, decoys, readers: int = 2, slices: int = 2, lesion=None,
               ratios=None) -> MadeStudy:
    """A study of len(labels) cases; `lesion` (SIDE x SIDE booleans) is every slice's lesion mask (None: the
    cases have no feature masks); reader r reads the cases in order rotated by r."""
    engine = schema.open_database(url)
    tokens = [f"reader-{r + 1}-{uuid.uuid4().hex}" for r in range(readers)]
    with engine.begin() as db:
        study_id = db.execute(insert(schema.studies).values(
            name="made-up", cv_run_id="0" * 32, cohort_hash="hash", method="gradcam", layer="conv", threshold=0.5,
            seed=0, decoy_share=0.2, features=",".join(FEATURES), simulated=False)).inserted_primary_key[0]
        codes, case_ids = [], []
        for k, (label, call, decoy) in enumerate(zip(labels, calls, decoys, strict=True)):
            code = f"c{k:03d}"
            case_id = db.execute(insert(schema.cases).values(
                study_id=study_id, code=code, patient_id=f"VF{k + 1:04d}", fold=k % 2, label=label,
                probability=0.8 if call == "malignant" else 0.2, call=call, decoy=decoy, stratum="s", slices=slices,
                display_size=SIDE, lesion_slices=slices if lesion is not None else 0,
                map_energy_ratio=None if ratios is None else ratios[k], map_pointing_hit=None
            )).inserted_primary_key[0]
            kinds = ("bone", "soft", "map", "other") + (("lesion",) if lesion is not None else ())
            for z in range(slices):
                for kind in kinds:
                    image = (np.asarray(lesion, np.uint8) * 255 if kind == "lesion"
                             else np.full((SIDE, SIDE), 40 * z + len(kind), np.uint8))
                    db.execute(insert(schema.images).values(case_id=case_id, slice_index=z, z=10 + z, kind=kind,
                                                            png=png(image)))
            codes.append(code)
            case_ids.append(case_id)
        reader_ids, orders = [], []
        for r in range(readers):
            reader_ids.append(db.execute(insert(schema.readers).values(
                study_id=study_id, number=r + 1, token_digest=token_digest(tokens[r]))).inserted_primary_key[0])
            order = [(k + r) % len(labels) for k in range(len(labels))]
            orders.append(order)
            db.execute(insert(schema.worklists), [{"reader_id": reader_ids[-1], "position": p, "case_id": case_ids[k]}
                                                  for p, k in enumerate(order)])
    return MadeStudy(engine, study_id, tokens, reader_ids, codes, case_ids, orders)


def answer_all(study: MadeStudy, reader: int, unaided, aided, ratings=None, clicks=None) -> None:
    """Reader `reader` (0-based) answers every case, both steps, in their order; the lists are by case position."""
    for k in study.orders[reader]:
        call, confidence = unaided[k]
        record(study.engine, study.reader_ids[reader], study.codes[k], "unaided", Answer(call, confidence))
        call, confidence = aided[k]
        x, y = clicks[k] if clicks else (0.5, 0.5)
        record(study.engine, study.reader_ids[reader], study.codes[k], "aided",
               Answer(call, confidence, ratings[k] if ratings else schema.RATINGS[0], "", 0, x, y))
