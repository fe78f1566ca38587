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

STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-top:1px solid #bbb;padding-top:.6em}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:.4em .6em}
table{border-collapse:collapse;margin:.4em 0;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px}
.wrong{color:#b00;font-weight:bold} .right{color:#070} .slice{margin:.8em 0 1.2em}
.pair img{width:340px;margin-right:6px;vertical-align:top} .note{color:#555;font-size:.9em}
"""


MLFLOW_UI_IMAGES = """<script>
if (location.protocol === "blob:") {
  const server = location.href.slice(5).split("/").slice(0, 3).join("/");
  for (const image of document.images) {
    image.src = server + "/get-artifact?path=" + encodeURIComponent(image.dataset.artifact) + "&run_uuid=RUN_ID";
  }
}
</script>"""


def write_page(path: Path, reviews, summary: list[dict], sanity_rows: list[dict], methods, layer: str,
               run_id: str, root: Path) -> Path:
    """`root` is the folder that mirrors the run's artifact tree (images are under it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(reviews, key=lambda r: (r.correct, r.fold, r.patient_id))
    errors = sum(not r.correct for r in reviews)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfrac review</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>vfrac review: where the model looked</h1>",
             f"<p class='note'>{len(reviews)} test patients, {errors} called wrongly (listed first). "
             f"Maps: {escape(', '.join(methods))} at layer {escape(layer)}, explaining the class each slice was "
             "called. Research use only, not for diagnosis.</p>",
             _summary_table(summary), _sanity_table(sanity_rows)]
    for review in ordered:
        parts.append(_patient_section(review, path.parent, Path(root), methods))
    parts.append(MLFLOW_UI_IMAGES.replace("RUN_ID", escape(run_id)) + "</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _patient_section(review, folder: Path, root: Path, methods) -> str:
    verdict = "right" if review.correct else "wrong"
    readers = ", ".join(f"{escape(name)}: {escape(call)}" for name, call in sorted(review.readers.items()))
    html = [f"<h2 id='{escape(review.patient_id)}'>{escape(review.patient_id)} "
            f"<span class='{verdict}'>({'correct' if review.correct else 'incorrect'})</span></h2>",
            f"<p>fold {review.fold}; true label <b>{escape(review.label)}</b>; model probability "
            f"{review.probability:.3f}, call <b>{escape(review.call)}</b>"
            + (f"; readers: {readers}" if readers else "") + "</p>"]
    html += [_slice_section(shown, folder, root, methods) for shown in review.slices]
    return "\n".join(html)


def write_sheet(path: Path, prediction: dict, slices: list[dict], methods, layer: str) -> Path:
    """One new patient's sheet (experiments.predict): the call, then each slice as on the review page."""
    path = Path(path)
    model, geometry = prediction["model"], prediction["input"]
    expected = model.get("expected") or {}
    auc = expected.get("patient_auc")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfrac: {escape(prediction['patient_id'])}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(prediction['patient_id'])}: {escape(prediction['call'])}, "
             f"p = {prediction['probability']:.2f}</h1>",
             f"<p>Threshold {prediction['threshold']:.2f} on the {escape(prediction['aggregation'])} of "
             f"{len(slices)} slice probabilities. Model {escape(model['label'])}"
             + (f"; expected patient AUC {auc:.2f} ({escape(expected.get('measured_on', ''))})" if auc else "")
             + f". CT {' x '.join(map(str, geometry['ct_shape']))} voxels of "
             f"{' x '.join(f'{v:.2f}' for v in geometry['spacing_mm'])} mm; input {geometry['input_size']} px, "
             f"{_windows(geometry['window'])}.</p>",
             _uncertainty(prediction.get("uncertainty")),
             f"<p class='note'>Maps: {escape(', '.join(methods))} at layer {escape(layer)}, explaining the class "
             "each slice was called. Research use only, not for diagnosis.</p>"]
    parts += [_slice_section(shown, path.parent, path.parent, methods) for shown in slices]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _windows(window) -> str:
    """`HU window 400 / 1800`, or an ensemble's windows, one per fold model."""
    windows = window if isinstance(window[0], list) else [window]
    return ("HU window " if len(windows) == 1 else "HU windows ") + ", ".join(f"{w[0]:g} / {w[1]:g}" for w in windows)


def _uncertainty(found: dict | None) -> str:
    """The uncertain flag in words (and the fold models' spread for an ensemble); nothing for older predictions."""
    if not found:
        return ""
    spread = "" if found["spread_sd"] is None else (
        f" Fold models: {', '.join(f'{p:.2f}' for p in found['members'])} (SD {found['spread_sd']:.2f}).")
    recalibrated = "" if not found["recalibration"] else (
        f" Recalibrated risk ({escape(found['recalibration']['method'])}, fitted on the CV run's out-of-fold "
        f"patients): {found['recalibration']['risk']:.2f}.")
    if found["reasons"]:
        return (f"<p class='warn'><b>Uncertain: a radiologist must look.</b> {escape('; '.join(found['reasons']))}."
                f"{spread}{recalibrated}</p>")
    return f"<p>Not flagged as uncertain.{spread}{recalibrated}</p>"


def _slice_section(shown: dict, folder: Path, root: Path, methods) -> str:
    shares = ", ".join(f"{name} {_pct(v)}" for name, v in zip(("z-1", "z", "z+1"), shown["attribution"], strict=True))
    html = [f"<div class='slice'><p>slice {shown['slice']}: probability {shown['probability']:.3f}; "
            f"share of the decision per slice: {shares}</p>"]
    for method in methods:
        crop, whole = shown["images"][method]
        html.append(f"<div class='pair'><p>{escape(method)}</p>"
                    + _image(crop, folder, root, f"{method} on the crop")
                    + _image(whole, folder, root, f"{method} on the axial slice") + "</div>")
    if shown["attention"] is not None:
        html.append(_attention_table(shown["attention"]))
    return "\n".join(html) + "</div>"


def _attention_table(measured: dict) -> str:
    if not measured:
        return "<p class='note'>no feature masks for this patient</p>"
    rows = ["<table><tr><th>method</th><th>feature</th><th>energy in mask</th><th>mask area</th>"
            "<th>ratio</th><th>pointing</th></tr>"]
    for (method, feature), m in sorted(measured.items()):
        hit = "" if math.isnan(m["pointing_hit"]) else ("hit" if m["pointing_hit"] else "miss")
        rows.append(f"<tr><td>{escape(method)}</td><td>{escape(feature)}</td><td>{_num(m['energy_fraction'])}</td>"
                    f"<td>{_num(m['area_fraction'])}</td><td>{_num(m['ratio'])}</td><td>{hit}</td></tr>")
    return "".join(rows) + "</table>"


def _summary_table(summary: list[dict]) -> str:
    if not summary:
        return ("<p class='note'>No slice with both a feature mask (mask_* columns) and a map to measure: "
                "no attention table.</p>")
    rows = ["<h2>Attention against the visual features</h2><table><tr><th>method</th><th>feature</th>"
            "<th>true class</th><th>call</th><th>slices</th><th>energy in mask</th><th>mask area</th><th>ratio</th>"
            "<th>pointing</th></tr>"]
    for r in summary:
        rows.append(f"<tr><td>{escape(r['method'])}</td><td>{escape(r['feature'])}</td><td>{escape(r['true_class'])}"
                    f"</td><td>{escape(r['call'])}</td><td>{r['slices']}</td><td>{_num(r['energy_fraction'])}</td>"
                    f"<td>{_num(r['area_fraction'])}</td><td>{_num(r['ratio'])}</td>"
                    f"<td>{_num(r['pointing_hit_rate'])}</td></tr>")
    return "".join(rows) + "</table>"


def _sanity_table(rows: list[dict]) -> str:
    html = ["<h2>Sanity check: randomised networks</h2><p class='note'>Rank correlation of each method's maps "
            "with those of the network re-initialised from the top down; a method whose maps survive full "
            "randomisation shows the image rather than what was learnt, and is flagged.</p><table><tr>"
            "<th>method</th><th>randomised down to</th><th>mean rho</th><th>images</th><th>draws</th><th></th></tr>"]
    for r in rows:
        flag = "<span class='wrong'>FLAGGED</span>" if r["flagged"] else "ok"
        html.append(f"<tr><td>{escape(r['method'])}</td><td>{escape(r['randomized_to'])}</td>"
                    f"<td>{_num(r['spearman_mean'])}</td><td>{r['images']}</td><td>{r['draws']}</td>"
                    f"<td>{flag}</td></tr>")
    return "".join(html) + "</table>"


def _image(image: Path, folder: Path, root: Path, alt: str) -> str:
    link = Path(os.path.relpath(image, folder)).as_posix()
    artifact = Path(os.path.relpath(image, root)).as_posix()
    return f"<img src='{escape(link)}' data-artifact='{escape(artifact)}' alt='{escape(alt)}'>"


def _num(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.0f}%"
