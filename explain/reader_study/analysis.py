"""What a reader study found: aided against unaided reading, real maps against decoys, clicks against lesions.

Per reader and pooled over readers: sensitivity, specificity and accuracy of the calls
unaided and aided (Wilson CIs; pooled intervals treat readings as independent, which
readers of the same cases are not, so the multi-reader analysis is the test), exact
McNemar on the same cases, and who changed their mind for the better (helped) or the
worse (harmed). Reader AUC comes from the call and confidence read as one 10-point
scale (benign, certain = 1 .. malignant, certain = 10) and is compared by
Obuchowski-Rockette with Hillis' degrees of freedom, random readers and cases, on the
largest block of readers and cases in which each reader finished each case. Map ratings
on real and decoy maps are compared by Fisher's exact test; readers' clicks by the
pointing game against the feature masks, beside the shown maps' own energy ratio;
agreement on ratings by Fleiss' kappa, on the same block.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from sqlalchemy import select

from explain.attention import attention
from explain.reader_study import schema
from explain.reader_study.material import decode_mask
from explain.runs import cv_run
from vfrac.document import ci_text, number_text, p_clause, p_text, to_html, to_markdown
from vfrac.errors import InputError
from vfrac.run_tree import READER_STUDIES
from vfrac.stats.agreement import category_counts, fleiss_kappa
from vfrac.stats.metrics import wilson_interval
from vfrac.stats.mrmc import obuchowski_rockette
from vfrac.stats.statistics import diagnostic_table, fisher_p, mcnemar

POOLED = "pooled"


@dataclass(frozen=True)
class Reading:
    """One reader's two answers on one case, with what the analysis needs of the case."""

    reader: int
    case_id: int
    patient_id: str
    label: str
    model_call: str
    decoy: bool
    unaided_call: str
    unaided_confidence: int
    aided_call: str | None
    aided_confidence: int | None
    map_rating: str | None
    click_hit: float | None  # 1/0 where the case has feature masks and the reader clicked, else None
    map_energy_ratio: float | None
    map_pointing_hit: float | None
    simulated: bool  # the answers were made up by --simulate

    @property
    def malignant(self) -> bool:
        return self.label == "malignant"


def score(call: str, confidence: int) -> int:
    """Call and confidence as one scale of suspicion: benign, certain = 1 .. benign, unsure = 5;
    malignant, unsure = 6 .. malignant, certain = 10."""
    return 5 + confidence if call == "malignant" else 6 - confidence


def readings(engine, study_id: int) -> tuple[object, list[Reading]]:
    """(the study's row, its readings: every case a reader answered unaided, with the aided answer if given)."""
    with engine.connect() as db:
        study = db.execute(select(schema.studies).where(schema.studies.c.id == study_id)).first()
        if study is None:
            raise InputError(f"no reader study {study_id} in {engine.url}")
        cases = {c.id: c for c in db.execute(select(schema.cases).where(schema.cases.c.study_id == study_id))}
        numbers = {r.id: r.number for r in db.execute(select(schema.readers).where(
            schema.readers.c.study_id == study_id))}
        given = defaultdict(dict)
        for answer in db.execute(select(schema.answers).where(schema.answers.c.reader_id.in_(list(numbers)))):
            given[(answer.reader_id, answer.case_id)][answer.step] = answer
        lesions = _lesions(db, {(a["aided"].case_id, a["aided"].click_slice) for a in given.values() if "aided" in a})
    rows = []
    for (reader_id, case_id), steps in sorted(given.items(), key=lambda item: (numbers[item[0][0]], item[0][1])):
        case, first, second = cases[case_id], steps["unaided"], steps.get("aided")
        hit = None
        if second is not None and (case_id, second.click_slice) in lesions:
            hit = click_hit(lesions[(case_id, second.click_slice)], second.click_x, second.click_y,
                            case.lesion_slices > 0)
        rows.append(Reading(numbers[reader_id], case_id, case.patient_id, case.label, case.call, case.decoy,
                            first.call, first.confidence, second and second.call, second and second.confidence,
                            second and second.map_rating, hit, case.map_energy_ratio, case.map_pointing_hit,
                            first.simulated))
    return study, rows


def click_hit(lesion: np.ndarray, x: float, y: float, has_lesion: bool) -> float | None:
    """1 when the click lies on the lesion's feature masks (within the pointing game's tolerance), 0 when off
    them, None when the case shows no lesion in its masks."""
    if not has_lesion:
        return None
    side = lesion.shape[0]
    point = np.zeros(lesion.shape, dtype=np.float32)
    point[min(int(y * side), side - 1), min(int(x * side), side - 1)] = 1.0
    if not lesion.any():  # the clicked slice shows none of the lesion: a miss
        return 0.0
    return attention(point, lesion)["pointing_hit"]


def calls_table(rows: list[Reading]) -> list[dict]:
    """Per reader and pooled: unaided and aided sensitivity, specificity, accuracy, McNemar, helped, harmed."""
    table = []
    for reader in sorted({r.reader for r in rows}) + [POOLED]:
        mine = [r for r in rows if (reader == POOLED or r.reader == reader) and r.aided_call is not None]
        if not mine:
            continue
        truth = [r.malignant for r in mine]
        unaided = diagnostic_table(truth, [r.unaided_call == "malignant" for r in mine])
        aided = diagnostic_table(truth, [r.aided_call == "malignant" for r in mine])
        first = np.array([r.unaided_call == r.label for r in mine])
        second = np.array([r.aided_call == r.label for r in mine])
        test = mcnemar(first, second, exact=True)
        row = {"reader": reader, "readings": len(mine), "mcnemar_p": test["p"],
               "helped": int(np.sum(~first & second)), "harmed": int(np.sum(first & ~second)),
               "changed": sum(r.unaided_call != r.aided_call for r in mine)}
        for step, found in (("unaided", unaided), ("aided", aided)):
            for name in ("sensitivity", "specificity", "accuracy"):
                row[f"{name}_{step}"] = found[name]
                row[f"{name}_{step}_ci"] = found[f"{name}_ci"]
        table.append(row)
    return table


def complete_block(rows: list[Reading]) -> tuple[list[int], list[int], dict]:
    """(readers, cases, case -> reader -> reading): the most readings in which each of the readers finished each
    of the cases (both steps), so a reader who stopped early or is still reading does not empty the block.

    Readers are taken in order of how many cases they finished; the block keeps the first j of them for the j
    (>= 2 where there are two) that gives the most readings.
    """
    finished = defaultdict(dict)
    for r in rows:
        if r.aided_call is not None:
            finished[r.case_id][r.reader] = r
    counts = Counter(reader for by in finished.values() for reader in by)
    ranked = sorted(counts, key=lambda reader: (-counts[reader], reader))
    best: tuple[list, list] = ([], [])
    for j in range(min(2, len(ranked)), len(ranked) + 1):
        readers = sorted(ranked[:j])
        cases = sorted(c for c, by in finished.items() if all(reader in by for reader in readers))
        if len(readers) * len(cases) > len(best[0]) * len(best[1]):
            best = (readers, cases)
    return best[0], best[1], finished


def mrmc(rows: list[Reading]) -> dict | None:
    """Reader AUC unaided vs aided (Obuchowski-Rockette, Hillis ddf) on `complete_block`'s readers and cases."""
    readers, cases, complete = complete_block(rows)
    truth = np.array([complete[c][readers[0]].malignant for c in cases], dtype=int)
    if len(readers) < 2 or len(cases) < 3 or truth.min(initial=1) == truth.max(initial=0):
        return None
    ratings = np.array([[[score(complete[c][j].unaided_call, complete[c][j].unaided_confidence) for c in cases]
                         for j in readers],
                        [[score(complete[c][j].aided_call, complete[c][j].aided_confidence) for c in cases]
                         for j in readers]], dtype=float)
    found = obuchowski_rockette(ratings, truth)
    low, high = found.ci
    return {"readers": len(readers), "cases": len(cases), "reader_auc_unaided": found.auc[0].tolist(),
            "reader_auc_aided": found.auc[1].tolist(), "auc_unaided": float(found.mean_auc[0]),
            "auc_aided": float(found.mean_auc[1]), "auc_unaided_ci": found.single_ci[0].tolist(),
            "auc_aided_ci": found.single_ci[1].tolist(), "difference": 0.0 - found.difference,
            "difference_ci": [0.0 - high, 0.0 - low], "f": found.f, "ddf": found.ddf, "p": found.p}


def map_ratings(rows: list[Reading]) -> dict:
    """Share of real and of decoy maps rated on the lesion, and Fisher's exact test of the two."""
    rated = [r for r in rows if r.map_rating is not None]
    counts = {kind: (sum(r.map_rating == schema.RATINGS[0] for r in rated if r.decoy == decoy),
                     sum(1 for r in rated if r.decoy == decoy)) for kind, decoy in (("real", False), ("decoy", True))}
    (on_real, real), (on_decoy, decoys) = counts["real"], counts["decoy"]
    return {"real_on_lesion": on_real, "real_rated": real, "decoy_on_lesion": on_decoy, "decoy_rated": decoys,
            "real_share": on_real / real if real else math.nan,
            "decoy_share": on_decoy / decoys if decoys else math.nan,
            "real_share_ci": wilson_interval(on_real, real), "decoy_share_ci": wilson_interval(on_decoy, decoys),
            "fisher_p": fisher_p(on_real, real - on_real, on_decoy, decoys - on_decoy) if real and decoys else math.nan,
            "by_rating": {kind: {rating: sum(r.map_rating == rating for r in rated if r.decoy == decoy)
                                 for rating in schema.RATINGS} for kind, decoy in (("real", False), ("decoy", True))}}


def pointing(rows: list[Reading]) -> list[dict]:
    """Per reader and pooled: the clicks' hit rate on the feature masks, beside the shown maps' energy ratio."""
    table = []
    for reader in sorted({r.reader for r in rows}) + [POOLED]:
        mine = [r for r in rows if (reader == POOLED or r.reader == reader) and r.click_hit is not None]
        hits = int(sum(r.click_hit for r in mine))
        real = list({r.case_id: r for r in mine if not r.decoy}.values())  # each case once
        table.append({"reader": reader, "clicks": len(mine), "hits": hits,
                      "hit_rate": hits / len(mine) if mine else math.nan,
                      "hit_rate_ci": wilson_interval(hits, len(mine)),
                      "map_energy_ratio": _mean([r.map_energy_ratio for r in real]),
                      "map_pointing_hit": _mean([r.map_pointing_hit for r in real])})
    return table


def rating_agreement(rows: list[Reading]) -> dict:
    """Fleiss' kappa of the map ratings on `complete_block`'s readers and cases."""
    readers, cases, complete = complete_block(rows)
    if len(readers) < 2 or not cases:
        return {"readers": len(readers), "cases": len(cases), "kappa": math.nan}
    table = np.array([[complete[c][reader].map_rating for reader in readers] for c in cases])
    return {"readers": len(readers), "cases": len(cases),
            "kappa": fleiss_kappa(category_counts(table, list(schema.RATINGS)))}


def analyse(study, rows: list[Reading]) -> dict:
    """Every number of the analysis, as one JSON-ready dict."""
    if not rows:
        raise InputError(f"study {study.id} has no answers yet: nothing to analyse")
    return {"study": study.id, "name": study.name, "cv_run_id": study.cv_run_id, "cohort_hash": study.cohort_hash,
            "simulated": bool(study.simulated), "method": study.method, "readers": len({r.reader for r in rows}),
            "cases": len({r.case_id for r in rows}), "readings": len(rows),
            "finished_readings": sum(r.aided_call is not None for r in rows), "calls": calls_table(rows),
            "mrmc": mrmc(rows), "map_ratings": map_ratings(rows), "pointing": pointing(rows),
            "rating_agreement": rating_agreement(rows)}


def analyse_study(engine, study_id: int, tracking_uri: str, out: str | None = None, log: bool = True) -> dict:
    """Analyse the study, write its files, log them and its metrics to the CV run, and renew the study report."""
    study, rows = readings(engine, study_id)
    found = analyse(study, rows)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = cv_run(client, study.cv_run_id) if log else None
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out or scratch) / READER_STUDIES / f"study-{study_id}"
        folder.mkdir(parents=True, exist_ok=True)
        blocks = section(found)
        (folder / "analysis.json").write_text(json.dumps(found, indent=1, default=_json), encoding="utf-8")
        (folder / "section.json").write_text(json.dumps(blocks), encoding="utf-8")
        (folder / "analysis.md").write_text(to_markdown(blocks), encoding="utf-8")
        (folder / "analysis.html").write_text(to_html(blocks, f"vfrac reader study {study_id}"), encoding="utf-8")
        _write_readings(folder / "readings.csv", rows)
        print(to_markdown(blocks), flush=True)
        if log:
            client.log_artifacts(run.info.run_id, str(folder), f"{READER_STUDIES}/study-{study_id}")
            for name, value in metrics(found).items():
                client.log_metric(run.info.run_id, name, value)
            print(f"logged to CV run {run.info.run_id}: {READER_STUDIES}/study-{study_id}/", flush=True)
    if log:  # the study report reads the section back from the run's artifacts
        renewed = subprocess.run([sys.executable, "-m", "experiments.report", "--run-id", study.cv_run_id,
                                  "--tracking-uri", tracking_uri], check=False)
        if renewed.returncode:
            raise InputError("the analysis is logged, but renewing the study report failed (above); "
                             f"python -m experiments.report --run-id {study.cv_run_id} retries it")
    return found


def metrics(found: dict) -> dict:
    """The headline numbers as MLflow metrics of the CV run, named by study (simulated_... for a simulated one)."""
    prefix = f"{'simulated_' if found['simulated'] else ''}reader_study_{found['study']}_"
    pooled = next((row for row in found["calls"] if row["reader"] == POOLED), None)
    values = {}
    if pooled:
        for name in ("sensitivity", "specificity", "accuracy"):
            values |= {f"{prefix}{name}_{step}": pooled[f"{name}_{step}"] for step in ("unaided", "aided")}
        values |= {f"{prefix}helped": pooled["helped"], f"{prefix}harmed": pooled["harmed"]}
    if found["mrmc"]:
        values |= {f"{prefix}auc_{step}": found["mrmc"][f"auc_{step}"] for step in ("unaided", "aided")}
        values[f"{prefix}auc_difference_p"] = found["mrmc"]["p"]
    values[f"{prefix}decoy_share_on_lesion"] = found["map_ratings"]["decoy_share"]
    values[f"{prefix}real_share_on_lesion"] = found["map_ratings"]["real_share"]
    return {k: float(v) for k, v in values.items() if not math.isnan(float(v))}


def section(found: dict) -> list:
    """The study report's section on this reader study, as vfrac.document blocks."""
    mark = "SIMULATED " if found["simulated"] else ""
    blocks = [("h2", f"{mark}Reader study {found['study']}: {found['name']}"),
              ("p", f"{found['readers']} readers, {found['cases']} cases, {found['finished_readings']} of "
                    f"{found['readings']} readings finished (unaided, then aided by the model's probability, call "
                    f"and {found['method']} map). Pooled intervals treat readings as independent; the multi-reader "
                    "analysis below is the test.")]
    if found["simulated"]:
        blocks.append(("p", "SIMULATED: these answers were made up by vfrac's simulated readers (--simulate), for "
                            "a demonstration; they say nothing about real readers."))
    rows = [[str(r["reader"]), str(r["readings"])]
            + [f"{ci_text(r[f'{n}_unaided'], r[f'{n}_unaided_ci'])} / {ci_text(r[f'{n}_aided'], r[f'{n}_aided_ci'])}"
               for n in ("sensitivity", "specificity", "accuracy")]
            + [p_text(r["mcnemar_p"]), str(r["helped"]), str(r["harmed"])] for r in found["calls"]]
    blocks.append(("table", ["reader", "readings", "sensitivity unaided / aided", "specificity unaided / aided",
                             "accuracy unaided / aided", "McNemar p (exact)", "helped", "harmed"], rows))
    m = found["mrmc"]
    if m:
        blocks.append(("p", f"Reader AUC (call and confidence as one 10-point scale), {m['readers']} readers x "
                            f"{m['cases']} cases: unaided {ci_text(m['auc_unaided'], m['auc_unaided_ci'])}, aided "
                            f"{ci_text(m['auc_aided'], m['auc_aided_ci'])}; difference aided - unaided "
                            f"{ci_text(m['difference'], m['difference_ci'])}, F = {m['f']:.2f} on 1 and "
                            f"{m['ddf']:.1f} df, {p_clause(m['p'])} (Obuchowski-Rockette, Hillis' df, random "
                            "readers and cases)."))
    else:
        blocks.append(("p", "Reader AUC not compared: it needs two or more readers who finished the same three or "
                            "more cases of both classes."))
    r = found["map_ratings"]
    blocks.append(("p", f"Maps rated on the lesion: real {r['real_on_lesion']} of {r['real_rated']} "
                        f"({ci_text(r['real_share'], r['real_share_ci'])}), decoy {r['decoy_on_lesion']} of "
                        f"{r['decoy_rated']} ({ci_text(r['decoy_share'], r['decoy_share_ci'])}); Fisher's exact "
                        + (p_clause(r["fisher_p"]) if not math.isnan(r["fisher_p"]) else "test not possible")
                        + ". Decoys come from the weight-randomised network: if they are rated as well as real maps, "
                        "the maps tell readers nothing."))
    blocks.append(("table", ["rating", "real maps", "decoy maps"],
                   [[rating, str(r["by_rating"]["real"][rating]), str(r["by_rating"]["decoy"][rating])]
                    for rating in schema.RATINGS]))
    blocks.append(("table", ["reader", "clicks on cases with feature masks", "on the lesion (pointing game)",
                             "shown real maps: energy ratio", "maps' own pointing"],
                   [[str(p["reader"]), str(p["clicks"]), ci_text(p["hit_rate"], p["hit_rate_ci"]),
                     number_text(p["map_energy_ratio"]), number_text(p["map_pointing_hit"])]
                    for p in found["pointing"]]))
    a = found["rating_agreement"]
    blocks.append(("p", f"Agreement on the map ratings (Fleiss' kappa, {a['readers']} readers x {a['cases']} cases "
                        f"they all rated): {number_text(a['kappa'])}."))
    return blocks


def _mean(values) -> float:
    """The mean of the known values; NaN when none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else math.nan


def _lesions(db, clicked: set) -> dict:
    """(case id, slice index) -> the lesion mask on the display, for the `clicked` (case id, slice index) only."""
    if not clicked:
        return {}
    found = db.execute(select(schema.images.c.case_id, schema.images.c.slice_index, schema.images.c.png).where(
        schema.images.c.case_id.in_({c for c, _ in clicked}) & (schema.images.c.kind == "lesion")))
    return {(row.case_id, row.slice_index): decode_mask(row.png) for row in found
            if (row.case_id, row.slice_index) in clicked}


def _write_readings(path: Path, rows: list[Reading]) -> None:
    fields = [f for f in Reading.__dataclass_fields__]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({f: "" if getattr(r, f) is None else getattr(r, f) for f in fields})


def _json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
