"""A vfrac model applied to one new patient's CT (`python -m experiments.predict`).

The CT and ROI are read and cropped by the training code with the settings the model
carries (experiments.model_package: crop settings and slice rule, HU window, input
size, aggregation, threshold), so a slice gets the probability it would have had in
the model's own run. Writes prediction.json, Grad-CAM overlays on the crop and on the
whole slice (of the evidence for each slice's call, and beside them for the other class),
each method's maps as a NIfTI volume on the CT's grid (maps/, to lay over the CT in 3D
Slicer), and a one-patient sheet (sheet.html) under --out; --dicom adds the call's
overlays as a DICOM Secondary Capture series and its maps as DICOM Parametric Maps.
Prints the one line a radiologist reads.
The patient is named by --patient-id only: nothing from the DICOM headers is written.

`--ensemble CV_RUN` uses the CV run's k fold models together (vfrac.stats.ensemble): each slice's
probability is their mean, the patient's aggregates those; the spread of their patient
probabilities and the distance to the threshold raise the `uncertain` flag; the maps are
their mean. `--recalibrate` adds a risk recalibrated on the CV run's out-of-fold patients.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
from mlflow import MlflowClient

from experiments.models import (
    cv_patients,
    load_members,
    predictor_of,
)
from explain.page import write_sheet
from explain.render import Folders, draw
from explain.runs import default_tracking_uri, masked
from explain.source_study import SourceStudy
from explain.structured_report import write_prediction_sr
from explain.volumes import pseudonymous_source, write_roi_seg
from vfrac.cohort import LABELS, Patient
from vfrac.data.cache import CropSettings, cut_crops, roi_voxels
from vfrac.data.crops import input_to_slice
from vfrac.data.window import BONE_WINDOW
from vfrac.errors import InputError
from vfrac.io.dicomweb import Pacs, credentials, shown
from vfrac.io.vertebrae import totalsegmentator_roi
from vfrac.io.volume import load_mask, load_volume
from vfrac.run_tree import RECALIBRATION
from vfrac.stats.ensemble import Recalibration, fit_recalibration, flagged_share


def verdict_line(prediction: dict) -> str:
    """`VF-NEW: malignant, p = 0.91 (threshold 0.50; model vfrac-resnet50 v1, CV AUC 0.87)`."""
    model = prediction["model"]
    auc = (model.get("expected") or {}).get("patient_auc")
    measured = "CV" if model.get("role") in ("final", "ensemble") else f"fold {model.get('fold')}"
    expected = "" if auc is None else f", {measured} AUC {auc:.2f}"
    spread = prediction["uncertainty"]["spread_sd"]
    spread = "" if spread is None else f" +- {spread:.2f}"
    line = (f"{prediction['patient_id']}: {prediction['call']}, p = {prediction['probability']:.2f}{spread} "
            f"(threshold {prediction['threshold']:.2f}; model {model['label']}{expected})")
    recalibration = prediction["uncertainty"]["recalibration"]
    if recalibration:
        line += f"; recalibrated risk {recalibration['risk']:.2f} ({recalibration['method']})"
    reasons = prediction["uncertainty"]["reasons"]
    return line + (f"\nUNCERTAIN, a radiologist must look: {'; '.join(reasons)}" if reasons else "")


def predict(args) -> dict:
    """Everything the command does; returns prediction.json's content."""

    out = args.out or Path("predictions") / args.patient_id
    clear_outputs(out, args.force)
    seconds, started = {}, time.perf_counter()
    volume, roi, roi_label, source = read_patient(args)  # first: bad input is refused before the model loads
    seconds["read CT and ROI"] = time.perf_counter() - started
    started = time.perf_counter()
    tracking_uri = args.tracking_uri or default_tracking_uri()
    with tempfile.TemporaryDirectory() as scratch:
        members, model_info = load_members(args, tracking_uri, Path(scratch))
    model_contract, predictor = members[0][1], predictor_of(members)
    seconds["load model"] = time.perf_counter() - started
    started = time.perf_counter()
    prepared = _crops(args.patient_id, volume, roi, model_contract)
    seconds["crop"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = predictor.predict_crops(args.patient_id, prepared.crops, prepared.context, prepared.slices)
    probabilities, probability = outcome.slices, outcome.patients[args.patient_id]
    threshold = predictor.threshold
    uncertainty = _uncertainty(args, probability, outcome.members[args.patient_id], outcome.spread(args.patient_id),
                               threshold, model_info, tracking_uri)
    seconds["predict"] = time.perf_counter() - started
    prediction = {
        "patient_id": args.patient_id, "probability": probability,
        "call": predictor.call(probability), "threshold": threshold,
        "aggregation": model_contract["aggregation"], "uncertain": bool(uncertainty["reasons"]),
        "uncertainty": uncertainty, "model": model_info,
        "input": {"ct_shape": list(volume.shape), "spacing_mm": [float(v) for v in volume.spacing],
                  "roi_label": roi_label, "vertebra": args.vertebra, "input_size": model_contract["input_size"],
                  "window": model_contract["window"] if len(members) == 1 else [c["window"] for _, c in members],
                  "crop": model_contract["crop"],
                  "slices_dropped_by_rule": [int(z) for z in prepared.dropped]},
        "slices": [{"slice": int(z), "probability": float(p), "box": [int(v) for v in box]}
                   for z, p, box in zip(prepared.slices, probabilities, prepared.boxes, strict=True)],
    }
    started = time.perf_counter()
    methods = tuple(args.method)
    sheet = _explain(predictor, model_contract, prepared, volume, prediction, methods, out, args.dicom, source)
    if args.dicom:  # the vertebra the model was given, and the result as a structured report, beside the maps
        prediction["roi_dicom"] = str(write_roi_seg(out / "dicom" / "roi" / "seg.dcm", args.patient_id, roi,
                                                    volume.affine, source).relative_to(out))
        evidence = list(source.headers) if source else [pseudonymous_source(args.patient_id, volume.shape,
                                                                              volume.affine)]
        prediction["report_dicom"] = str(write_prediction_sr(out / "dicom" / "report" / "sr.dcm", prediction,
                                                             model_contract, evidence).relative_to(out))
    seconds["explain"] = time.perf_counter() - started
    if args.send:
        started = time.perf_counter()
        prediction["sent"] = send_to_pacs(args, out / "dicom")
        seconds["send"] = time.perf_counter() - started
    prediction["seconds"] = {name: round(value, 3) for name, value in seconds.items()}
    prediction["files"] = {"prediction": str(out / "prediction.json"), "sheet": str(sheet)}
    (out / "prediction.json").write_text(json.dumps(prediction, indent=1) + "\n")
    return prediction


def _uncertainty(args, probability: float, member_probabilities: list[float], spread: float | None,
                 threshold: float, model_info: dict, tracking_uri: str) -> dict:
    """The spread of the members' patient probabilities, the uncertain flag's reasons, how the rule's distance
    part sorted the CV run's out-of-fold patients, and the recalibrated risk if asked.

    The call and the flag stay on the model's own scale, the one its CV results and threshold were measured
    on; a recalibration changes the risk reported beside it, not the call.
    """


    cv_rows = cv_patients(tracking_uri, model_info.get("cv_run_id"))
    recalibration = None
    if args.recalibrate:
        if cv_rows is None:
            raise InputError(f"--recalibrate: the CV run {model_info.get('cv_run_id')} has no out-of-fold "
                             f"predictions in {masked(tracking_uri)} to fit it on")
        fitted = _recalibration(tracking_uri, model_info["cv_run_id"], cv_rows, args.recalibrate)
        recalibration = fitted.as_dict() | {"risk": float(fitted.apply([probability])[0])}
    checked = None
    if cv_rows is not None:
        checked = flagged_share([r["label"] for r in cv_rows], [r["probability"] for r in cv_rows], threshold,
                                args.rule) | {"on": f"out-of-fold predictions of CV run {model_info['cv_run_id']}"}
    return {"members": [float(p) for p in member_probabilities], "spread_sd": spread,
            "reasons": args.rule.reasons(probability, spread, threshold), "rule": asdict(args.rule),
            "rule_checked": checked, "recalibration": recalibration}


def _recalibration(tracking_uri: str, cv_run_id: str, rows: list[dict], method: str):
    """The CV run's stored recalibration of this method, fitted on its out-of-fold patients and logged first."""


    client = MlflowClient(tracking_uri=tracking_uri)
    name = f"{RECALIBRATION}/{method}.json"
    if name in {a.path for a in client.list_artifacts(cv_run_id, RECALIBRATION)}:
        with tempfile.TemporaryDirectory() as scratch:
            return Recalibration.from_dict(json.loads(Path(client.download_artifacts(cv_run_id, name, scratch))
                                                      .read_text()))
    try:
        fitted = fit_recalibration([r["label"] for r in rows], [r["probability"] for r in rows], method)
    except ValueError as error:
        raise InputError(f"--recalibrate {method} on CV run {cv_run_id}: {error}") from error
    client.log_dict(cv_run_id, fitted.as_dict(), name)
    return fitted


def read_patient(args):
    """(Volume, ROI booleans on its grid, the label used, the CT's study for --dicom-output study or None)
    from files or from a PACS (--dicomweb)."""
    if args.dicomweb:
        with tempfile.TemporaryDirectory(prefix="vfrac-dicomweb-") as scratch:  # gone once read
            return _read(args, *fetch_from_pacs(args, Path(scratch)))
    return _read(args, args.ct, None)


def send_to_pacs(args, folder: Path) -> dict:
    """The DICOM objects written under `folder` stored in the PACS (STOW-RS); how many of each kind."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.rglob("*.dcm"))]
    Pacs(args.dicomweb, credentials(args.dicomweb_credentials)).store(datasets)
    kinds = dict(Counter(str(dataset.SOPClassUID.name) for dataset in datasets))
    print(f"sent to {shown(args.dicomweb)}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()),
          flush=True)
    return kinds


def fetch_from_pacs(args, folder: Path) -> tuple[Path, Path | None]:
    """The CT series of --study, and the --seg-series SEG if named, retrieved into `folder`."""
    pacs = Pacs(args.dicomweb, credentials(args.dicomweb_credentials))
    series = pacs.ct_series(args.study, args.series)
    pacs.check_budget(args.study, series)
    print(f"fetching {series.describe()} from {pacs.url}", flush=True)
    ct = folder / "ct"
    pacs.fetch(args.study, series, ct)
    if not args.seg_series:
        return ct, None
    segs = pacs.fetch(args.study, pacs.seg_series(args.study, args.seg_series), folder / "seg")
    if len(segs) != 1:
        raise InputError(f"SEG series {args.seg_series} holds {len(segs)} instances; vfrac reads a SEG of one")
    return ct, segs[0]


def _read(args, ct: Path, seg: Path | None):
    if seg is not None:
        roi_path, roi_label = seg, args.roi_label
    elif args.segmentation:
        roi_path, roi_label = totalsegmentator_roi(args.segmentation, args.vertebra)
    else:
        roi_path, roi_label = args.roi, args.roi_label
    volume = load_volume(ct)
    patient = Patient(args.patient_id, "benign", ct, roi_path, roi_label)  # the label is not used
    source = SourceStudy.read(ct, volume.affine) if args.dicom_output == "study" else None
    return volume, roi_voxels(load_mask(roi_path, volume, roi_label), patient), roi_label, source


def _crops(patient_id: str, volume, roi: np.ndarray, model_contract: dict):

    return cut_crops(patient_id, volume, roi, CropSettings.from_values(model_contract["crop"]))


OUTPUTS = ("prediction.json", "sheet.html", "overlays", "maps", "dicom")


def clear_outputs(out: Path, force: bool) -> None:
    """An empty --out, or with --force one whose earlier prediction's files are removed."""

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise InputError(f"{out}: not empty; choose another --out, or --force to replace an earlier prediction")
    for name in OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _explain(predictor, model_contract: dict, prepared, volume, prediction: dict, methods, out: Path,
             dicom: bool, source=None) -> Path:
    """Maps of every slice, of the class it was called and beside them of the other class, as overlays and the
    sheet; returns the sheet's path. An ensemble's maps and attribution are the mean of its fold models' (each on
    its own inputs)."""
    from explain.cam import (  # TensorFlow (see above)
        DEFAULT_LAYER,
        Explainer,
        called_classes,
        slice_shares,
        windowed_rgb,
    )

    size, layer = model_contract["input_size"], model_contract.get("cam_layer", DEFAULT_LAYER)
    bone = windowed_rgb(predictor.inputs(prepared.crops, prepared.context, window=BONE_WINDOW))[..., 1]
    classes = called_classes([s["probability"] for s in prediction["slices"]], prediction["threshold"])
    maps, other, attribution, count = {}, {}, 0.0, len(predictor.members)
    for k, member in enumerate(predictor.members):
        images = predictor.inputs(prepared.crops, prepared.context, k)
        explainer = Explainer(member.model, layer)  # the layer was checked when the model was loaded
        found, against, shares = explainer.explain_both(images, classes, methods)
        maps = {m: maps.get(m, 0.0) + found[m] / count for m in methods}
        other = {m: other.get(m, 0.0) + against[m] / count for m in methods}
        attribution = attribution + shares / count
    cache_size = prepared.crops.shape[1]
    transforms = [input_to_slice(box, prepared.context, cache_size, size) for box in prepared.boxes]
    chosen = [(entry["slice"], entry["probability"]) for entry in prediction["slices"]]
    drawn = draw(volume, prediction["patient_id"], chosen, classes, maps, other, bone, transforms,
                 Folders(out / "maps", out / "overlays", out / "dicom" if dicom else None), source)
    prediction["maps"] = {m: str(path.relative_to(out)) for m, path in drawn.maps.items()}
    prediction["maps"] |= {f"{m}_dicom": str(path.relative_to(out)) for m, path in drawn.dicom_maps.items()}
    prediction["other_class_maps"] = {m: str(path.relative_to(out)) for m, path in drawn.other_maps.items()}
    shown = []
    for k, entry in enumerate(prediction["slices"]):
        entry["overlays"] = _relative(drawn.overlays[k], out)
        entry["other_class_overlays"] = _relative(drawn.other_overlays[k], out)
        shown.append({"slice": entry["slice"], "probability": entry["probability"], "call": LABELS[classes[k]],
                      "images": drawn.overlays[k], "other": drawn.other_overlays[k], "attention": None,
                      "attribution": slice_shares(attribution[k])})
    return write_sheet(out / "sheet.html", prediction, shown, methods, layer)


def _relative(overlays: dict, out: Path) -> dict:
    """method -> (crop PNG, slice PNG) as prediction.json lists them: paths relative to --out."""
    return {m: {"crop": str(crop.relative_to(out)), "slice": str(whole.relative_to(out))}
            for m, (crop, whole) in overlays.items()}
