"""report/model_card.md: what the CV run's models are for, what they were trained on, how well
they did (with CIs), where they failed, and the fields only the author can fill."""

from __future__ import annotations

import math

from experiments.study_tables import TODO
from vfrac.document import ci_text
from vfrac.run_tree import COHORT_HASH_TAG


def model_card(data: dict, model: dict, limitations: str) -> str:
    params, metrics, run = data["params"], data["metrics"], data["run"]
    n, malignant = len(model), sum(m["label"] for m in model.values())
    wrong = sorted((m for m in model.values() if m["prediction"] != m["label"]),
                   key=lambda m: -abs(m["probability"] - 0.5))

    def metric(name):
        return ci_text(metrics.get(name, math.nan),
                       (metrics.get(f"{name}_ci_low", math.nan), metrics.get(f"{name}_ci_high", math.nan)))

    failures = [f"- {m['patient_id']}: {'malignant' if m['label'] else 'benign'}, called "
                f"{'malignant' if m['prediction'] else 'benign'} at p = {m['probability']:.2f} (fold {m['fold']})"
                for m in wrong[:20]]
    lines = [
        f"# Model card: vfrac ResNet50, CV run {run.info.run_id}", "",
        "## Intended use",
        "Research on telling benign from malignant vertebral fractures on CT, and on what such a model "
        "looks at. Not a medical device and not for diagnosis: no call of this model may decide a patient's "
        "care.", "",
        "## Model",
        f"ResNet50 (keras.applications), global average pooling, dropout, one sigmoid unit; input "
        f"{params.get('input_size')} px 3-slice crops (a slice and its neighbours) around the ROI; weights "
        f"{params.get('weights')}; per-patient call: {params.get('aggregation')} of the slice probabilities at "
        f"threshold {params.get('threshold')}. One model per outer fold ({params.get('folds')} folds).", "",
        "## Data",
        f"{n} analysed patients ({malignant} malignant, {n - malignant} benign), cohort hash "
        f"{run.data.tags.get(COHORT_HASH_TAG)}. Source, dates, scanners and reference standard: {TODO}.", "",
        "## Metrics (pooled out-of-fold, 95% CIs)",
        "| level | sensitivity | specificity | accuracy | AUC |", "| --- | --- | --- | --- | --- |",
        *[f"| per {level} | " + " | ".join(metric(f"{level}_{name}") for name in
                                            ("sensitivity", "specificity", "accuracy", "auc")) + " |"
          for level in ("slice", "patient")],
        "",
        "## Known failure modes",
        f"{len(wrong)} of {n} patients called wrongly; the most confident errors first (the review page shows "
        "where the model looked on each):", *(failures or ["- none"]), "",
        "## Limitations", limitations, "",
        "## Ethical considerations",
        f"Consent and approval for the data: {TODO}. Subgroups (age, sex, scanner, primary tumour) in which "
        f"performance may differ: {TODO}. Only the manifest's pseudonymous ids appear in the run.", "",
    ]
    return "\n".join(lines)
