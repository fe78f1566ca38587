"""The review sheet: one self-contained HTML page, its images as PNG files in the run's tree.

No fonts, styles or links outside the run: it opens from disk or from a downloaded
artifact folder with its images beside it. The MLflow UI shows an HTML artifact as a
blob: document, where relative links resolve to nothing; there a few lines of script
point each image at the same file among the run's artifacts on that server.
Patients whose call was wrong come first.
"""

from __future__ import annotations

import math
import os
from html import escape
from pathlib import Path

from explain.faithfulness import STEPS
from vfrac.document import number_text, to_html

STYLE = """
body{max-width:1400px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-top:1px solid #bbb;padding-top:.6em}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:.4em .6em}
table{font-size:.85em} .wrong{color:#b00} .right{color:#070} .slice{margin:.8em 0 1.2em}
.figures img{width:340px;margin-right:6px;vertical-align:top;display:inline-block} .note{color:#555;font-size:.9em}
"""


MLFLOW_UI_IMAGES = """<script>
if (location.protocol === "blob:") {
  const server = location.href.slice(5).split("/").slice(0, 3).join("/");
  for (const image of document.images) {
    image.src = server + "/get-artifact?path=" + encodeURIComponent(image.dataset.artifact) + "&run_uuid=RUN_ID";
  }
}
</script>"""


def mlflow_ui_script(run_id: str) -> str:
    """The script that, inside the MLflow UI, loads each image with a data-artifact path from run `run_id`."""
    return MLFLOW_UI_IMAGES.replace("RUN_ID", escape(run_id))


NOTE = {"class": "note"}
MAPS_SHOWN = ("each slice's evidence for the class it was called and, beside it, the evidence for the other class: "
              "what a benign call still saw of malignancy, and the reverse.")
RESEARCH_ONLY = "Research use only, not for diagnosis."
OTHER_CLASS = {"malignant": "benign", "benign": "malignant"}
FAITHFULNESS_NOTE = (
    f"Each map's pixels, highest first, are replaced by a blurred copy of the input in {STEPS} steps (deletion) or "
    "put back into that copy (insertion), and the area under the trained network's probability of the explained "
    "class is taken (Petsiuk et al., 2018): a faithful method has a lower deletion and a higher insertion area "
    "than the maps of the randomised network and than a random order.")


def write_page(path: Path, reviews, summary: list[dict], sanity_rows: list[dict], faithfulness_rows: list[dict],
               methods, layer: str, run_id: str, root: Path) -> Path:
    """`root` is the folder that mirrors the run's artifact tree (images are under it)."""
    path = Path(path)
    ordered = sorted(reviews, key=lambda r: (r.correct, r.fold, r.patient_id))
    errors = sum(not r.correct for r in reviews)
    blocks = [("h1", "vfrac review: where the model looked"),
              ("p", f"{len(reviews)} test patients, {errors} called wrongly (listed first). Maps: "
                    f"{', '.join(methods)} at layer {layer}, {MAPS_SHOWN} {RESEARCH_ONLY}", NOTE),
              *_summary_table(summary), *_sanity_table(sanity_rows), *_faithfulness_table(faithfulness_rows)]
    for review in ordered:
        blocks += _patient_section(review, path.parent, Path(root), methods)
    return _write(path, blocks, "vfrac review", mlflow_ui_script(run_id))


def _write(path: Path, blocks, title: str, script: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(blocks, title, style=STYLE, script=script), encoding="utf-8")
    return path


def _patient_section(review, folder: Path, root: Path, methods) -> list:
    readers = ", ".join(f"{name}: {call}" for name, call in sorted(review.readers.items()))
    verdict = "correct" if review.correct else "incorrect"
    return [("h2", f"{review.patient_id} ({verdict})",
             {"id": review.patient_id, "class": "right" if review.correct else "wrong"}),
            ("p", f"fold {review.fold}; true label {review.label}; model probability {review.probability:.3f}, "
                  f"call {review.call}" + (f"; readers: {readers}" if readers else ""))] + \
        [_slice_section(shown, folder, root, methods) for shown in review.slices]


def write_sheet(path: Path, prediction: dict, slices: list[dict], methods, layer: str) -> Path:
    """One new patient's sheet (experiments.predict): the call, then each slice as on the review page."""
    path = Path(path)
    model, geometry = prediction["model"], prediction["input"]
    expected = model.get("expected") or {}
    auc = expected.get("patient_auc")
    blocks = [("h1", f"{prediction['patient_id']}: {prediction['call']}, p = {prediction['probability']:.2f}"),
              ("p", f"Threshold {prediction['threshold']:.2f} on the {prediction['aggregation']} of "
                    f"{len(slices)} slice probabilities. Model {model['label']}"
                    + (f"; expected patient AUC {auc:.2f} ({expected.get('measured_on', '')})" if auc else "")
                    + f". CT {' x '.join(map(str, geometry['ct_shape']))} voxels of "
                    f"{' x '.join(f'{v:.2f}' for v in geometry['spacing_mm'])} mm; input {geometry['input_size']} "
                    f"px, {_windows(geometry['window'])}."),
              *_uncertainty(prediction.get("uncertainty")),
              ("p", f"Maps: {', '.join(methods)} at layer {layer}, {MAPS_SHOWN} {RESEARCH_ONLY}", NOTE)]
    blocks += [_slice_section(shown, path.parent, path.parent, methods) for shown in slices]
    return _write(path, blocks, f"vfrac: {prediction['patient_id']}")


def _windows(window) -> str:
    """`HU window 400 / 1800`, or an ensemble's windows, one per fold model."""
    windows = window if isinstance(window[0], list) else [window]
    return ("HU window " if len(windows) == 1 else "HU windows ") + ", ".join(f"{w[0]:g} / {w[1]:g}" for w in windows)


def _uncertainty(found: dict | None) -> list:
    """The uncertain flag in words (and the fold models' spread for an ensemble); nothing for older predictions."""
    if not found:
        return []
    spread = "" if found["spread_sd"] is None else (
        f" Fold models: {', '.join(f'{p:.2f}' for p in found['members'])} (SD {found['spread_sd']:.2f}).")
    recalibrated = "" if not found["recalibration"] else (
        f" Recalibrated risk ({found['recalibration']['method']}, fitted on the CV run's out-of-fold "
        f"patients): {found['recalibration']['risk']:.2f}.")
    if found["reasons"]:
        return [("p", f"Uncertain: a radiologist must look. {'; '.join(found['reasons'])}.{spread}{recalibrated}",
                 {"class": "warn"})]
    return [("p", f"Not flagged as uncertain.{spread}{recalibrated}")]


def _slice_section(shown: dict, folder: Path, root: Path, methods) -> tuple:
    shares = ", ".join(f"{name} {_pct(v)}" for name, v in zip(("z-1", "z", "z+1"), shown["attribution"], strict=True))
    blocks = [("p", f"slice {shown['slice']}: probability {shown['probability']:.3f}; share of the decision per "
                    f"slice: {shares}")]
    call, other = shown["call"], OTHER_CLASS[shown["call"]]
    for method in methods:
        for place, k in (("the crop", 0), ("the axial slice", 1)):
            called, against = shown["images"][method][k], shown["other"][method][k]
            blocks.append(("figures", f"{method} on {place}: evidence for {call} (the call), beside it for {other}",
                           [_image(called, folder, root, f"{method}, evidence for {call} (the call), on {place}"),
                            _image(against, folder, root, f"{method}, evidence for {other}, on {place}")]))
    if shown["attention"] is not None:
        blocks += _attention_table(shown["attention"])
    return ("group", "slice", blocks)


def _attention_table(measured: dict) -> list:
    if not measured:
        return [("p", "no feature masks for this patient", NOTE)]
    rows = [[method, feature, _num(m["energy_fraction"]), _num(m["area_fraction"]), _num(m["ratio"]),
             "" if math.isnan(m["pointing_hit"]) else ("hit" if m["pointing_hit"] else "miss")]
            for (method, feature), m in sorted(measured.items())]
    return [("table", ["method", "feature", "energy in mask", "mask area", "ratio", "pointing"], rows)]


def _summary_table(summary: list[dict]) -> list:
    if not summary:
        return [("p", "No slice with both a feature mask (mask_* columns) and a map to measure: no attention "
                      "table.", NOTE)]
    rows = [[r["method"], r["feature"], r["true_class"], r["call"], r["slices"], _num(r["energy_fraction"]),
             _num(r["area_fraction"]), _num(r["ratio"]), _num(r["pointing_hit_rate"])] for r in summary]
    return [("h2", "Attention against the visual features"),
            ("table", ["method", "feature", "true class", "call", "slices", "energy in mask", "mask area", "ratio",
                       "pointing"], rows)]


def _sanity_table(rows: list[dict]) -> list:
    table = [[r["method"], r["randomized_to"], _num(r["spearman_mean"]), r["images"], r["draws"],
              "FLAGGED" if r["flagged"] else "ok"] for r in rows]
    return [("h2", "Sanity check: randomised networks"),
            ("p", "Rank correlation of each method's maps with those of the network re-initialised from the top "
                  "down; a method whose maps survive full randomisation shows the image rather than what was "
                  "learnt, and is flagged.", NOTE),
            ("table", ["method", "randomised down to", "mean rho", "images", "draws", ""], table)]


def _faithfulness_table(rows: list[dict]) -> list:
    table = [[r["method"], r["maps"], number_text(r["deletion_auc"], 3), number_text(r["insertion_auc"], 3),
              r["slices"]] for r in rows]
    return [("h2", "Faithfulness: deleting and inserting what the maps point at"),
            ("p", FAITHFULNESS_NOTE, NOTE),
            ("table", ["method", "maps", "deletion AUC", "insertion AUC", "slices"], table)]


def _image(image: Path, folder: Path, root: Path, alt: str) -> tuple:
    link = Path(os.path.relpath(image, folder)).as_posix()
    artifact = Path(os.path.relpath(image, root)).as_posix()
    return ("img", link, alt, {"data-artifact": artifact})


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else number_text(value)


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.0f}%"
