"""The study report built in process from hand-made predictions, with values worked out by hand."""

import shutil
import subprocess
from types import SimpleNamespace

import pytest

from experiments.study_report import build
from vfrac.document import to_html, to_markdown

# (patient, label, probability of its one slice, reader a's call or None, reader b's call)
PATIENTS = [("P1", 1, 0.9, "malignant", "malignant"), ("P2", 1, 0.8, "benign", "malignant"),
            ("P3", 1, 0.3, "malignant", "malignant"), ("P4", 1, 0.7, "malignant", "malignant"),
            ("P5", 0, 0.2, "benign", "benign"), ("P6", 0, 0.6, "benign", "benign"),
            ("P7", 0, 0.1, "malignant", "benign"), ("P8", 0, 0.4, None, "benign")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    slices = [{"patient_id": pid, "fold": i % 2, "slice": 10, "label": label, "probability": p}
              for i, (pid, label, p, _, _) in enumerate(PATIENTS)]
    patients = [SimpleNamespace(patient_id=pid, label="malignant" if label else "benign",
                                features={"soft_tissue_mass": label} if pid != "P8" else {},
                                readers={name: call for name, call in (("a", a), ("b", b)) if call},
                                vertebra="L1" if pid in ("P1", "P2", "P5") else "T12", centre="")
                for pid, label, _, a, b in PATIENTS]
    run = SimpleNamespace(info=SimpleNamespace(run_name="cv demo", run_id="r1"),
                          data=SimpleNamespace(tags={"vfrac.cohort_hash": "abc", "vfrac.git_commit": "0123"}))
    data = {"run": run, "params": {"preset": "demo", "folds": "2", "trials": "0", "epochs": "10"}, "metrics": {},
            "slices": slices, "attention": None, "patients": patients, "threshold": 0.5, "aggregation": "mean",
            "spacing": {pid: (2.0 if label else 1.0, 0.7, 0.7) for pid, label, *_ in PATIENTS},
            "scans": {pid: {"manufacturer": "SIEMENS", "kvp": "120"} for pid, *_ in PATIENTS[:6]},
            "excluded": [{"patient_id": "P9", "label": "malignant", "reason": "P9/ct: no CT image among 3 file(s)"},
                         {"patient_id": "", "label": "", "reason": "manifest row 10: 3 fields, the header has 4"}],
            "slice_report": [{"patient_id": pid, "kept": "1", "dropped": "2"} for pid, *_ in PATIENTS]}
    folder = tmp_path_factory.mktemp("report")
    blocks = build(data, folder)
    return to_markdown(blocks), to_html(blocks), folder, data


def test_readers_against_the_model_with_mcnemar_and_holm(report):
    text, _, _, _ = report
    # model calls (threshold 0.5): P3 and P6 wrong, the rest right.
    # reader a (7 patients, P8 unread): right on P1 P3 P4 P5 P6, wrong on P2 P7; sensitivity 3/4, specificity 2/3;
    # b = a right, model wrong = P3, P6; c = the reverse = P2, P7: exact p = 1.
    assert "| a | 7 | 0.75 (0.30-0.95) | 0.67 (0.21-0.94) | 0.71 (0.36-0.92) | 0.71 | 2 / 2 | 1.000 (exact) | 1.000 |" \
        in text
    # reader b (8): always right; b = 2, c = 0: exact p = 0.5; Holm over the two tests: 2 x 0.5 = 1
    assert "| b | 8 | 1.00 (0.51-1.00) | 1.00 (0.51-1.00) | 1.00 (0.68-1.00) | 0.75 | 2 / 0 | 0.500 (exact) | 1.000 |" \
        in text
    assert "Analysed patients without a reading, left out of that reader's row: a 1." in text
    assert "-0.00" not in text


def test_calibration_is_reported_as_slope_and_in_the_large(report):
    text, html, folder, _ = report
    assert "calibration-in-the-large" in text and "intercept with the slope fixed at 1" in text
    assert "<table>" in html and (folder / "roc.png").is_file() and (folder / "calibration.png").is_file()


def test_a_cohort_changed_since_the_run_is_refused(tmp_path):
    from experiments.run_data import check_same_cohort
    from vfrac.cohort import read_manifest
    from vfrac.data.cache import CropSettings, current_cohort_hash
    from vfrac.errors import InputError
    from vfrac.synth import generate_cohort

    manifest = generate_cohort(tmp_path / "cohort", 4, seed=1, matrix=64)
    patients = read_manifest(manifest).patients
    params = {"cache_dir": str(tmp_path / "cache")} | {k: str(v) for k, v in vars(CropSettings()).items()}
    logged = current_cohort_hash(manifest, patients, CropSettings(), tmp_path / "cache")

    def run():
        return SimpleNamespace(info=SimpleNamespace(run_id="r1"),
                               data=SimpleNamespace(params=params, tags={"vfrac.cohort_hash": logged}))

    check_same_cohort(run(), manifest, patients)  # unchanged: accepted
    original = manifest.read_bytes()
    manifest.write_bytes(original[:original.rstrip().rfind(b"\n") + 1])  # the last patient dropped
    with pytest.raises(InputError, match="the cohort changed since run r1"):
        check_same_cohort(run(), manifest, read_manifest(manifest).patients)
    manifest.write_bytes(original)
    check_same_cohort(run(), manifest, patients)
    roi = patients[0].roi
    roi.write_bytes(roi.read_bytes()[:-1] + b"\x01")  # one ROI file changed
    with pytest.raises(InputError, match="the cohort changed"):
        check_same_cohort(run(), manifest, read_manifest(manifest).patients)


def test_two_by_two_tables_folds_and_agreement_by_hand(report):
    text, _, _, _ = report
    # per patient: TP P1 P2 P4, FN P3, FP P6, TN P5 P7 P8; 3/4 everywhere: Wilson (0.30-0.95)
    cell = "0.75 (0.30-0.95)"
    assert f"| per patient | 3 | 1 | 1 | 3 | {cell} | {cell} | {cell} | {cell} |" in text
    assert f"| per slice | 3 | 1 | 1 | 3 | {cell} | {cell} | {cell} | {cell} |" in text  # one slice each
    # fold 0 = P1 P3 P5 P7: calls 1 0 0 0 on labels 1 1 0 0; both positives above both negatives: AUC 1
    assert "| 0 | 4 | 4 | 0.50 | 1.00 | 0.75 | 1.00 | 1.00 |" in text
    # readers a and b on P1-P7: agree on 5 of 7, each calls malignant 4 of 7: chance 25/49;
    # Cohen (35 - 25) / 24 = 0.42; Fleiss with equal margins gives the same
    assert "on the 7 analysed patients every reader read (1 others left out)" in text
    assert "| a - b | Cohen | 0.42 (-0.34 to 1.00) |" in text and "| a, b | Fleiss | 0.42 (" in text
    assert "No tuning (--trials 0): every fold trained with the default settings for the preset's 10 epochs." in text
    assert "The fold runs' settings were not found in the store." in text  # the hand-made run has no fold runs


def test_limitations_and_model_card_come_from_the_runs_facts(report):
    from experiments.model_card import model_card
    from experiments.study_report import _limitations, patient_table

    text, _, _, data = report
    assert "## 7. Limitations" in text and "8 patients (4 malignant, 4 benign)" in text
    assert "single centre" in text and "random initial weights" in text
    card = model_card(data, patient_table(data), _limitations(data))
    assert "Not a medical device and not for diagnosis" in card
    assert "2 of 8 patients called wrongly" in card
    assert card.index("- P3: malignant, called benign at p = 0.30") < card.index("- P6: benign, called malignant")
    assert "to be completed by the author" in card


def test_the_sanity_sentence_says_what_a_flag_means():
    from experiments.study_tables import sanity_sentence

    rows = [{"method": "gradcam", "randomized_to": "conv1", "spearman_mean": "0.12", "flagged": "0"},
            {"method": "hirescam", "randomized_to": "conv1", "spearman_mean": "0.71", "flagged": "1"},
            {"method": "gradcam", "randomized_to": "conv5", "spearman_mean": "0.90", "flagged": "0"}]
    sentence = sanity_sentence(rows)
    assert "gradcam rho 0.12; hirescam rho 0.71" in sentence
    assert "hirescam still agree with the fully randomised network's maps" in sentence
    assert "change when the learnt weights are destroyed" in sanity_sentence(rows[:1])
    assert sanity_sentence(None).startswith("No randomisation sanity check")


def test_baseline_characteristics_by_class(report):
    text, _, _, _ = report
    assert "|  | benign | malignant | all |" in text
    assert "| patients | 4 | 4 | 8 |" in text
    # L1: P1 P2 (malignant), P5 (benign); the rest T12
    assert "| vertebral level | T12 3, L1 1 | L1 2, T12 2 | T12 5, L1 3 |" in text
    assert "| slice spacing, mm | 1 (1-1), n = 4 | 2 (2-2), n = 4 | 1.5 (1-2), n = 8 |" in text
    assert "| manufacturer | SIEMENS 2 | SIEMENS 4 | SIEMENS 6 |" in text  # P7, P8 without a DICOM header
    assert "| soft_tissue_mass present | 0/3 | 4/4 | 4/7 |" in text  # P8 unread


def test_the_participant_flow_is_drawn_from_the_runs_numbers(report):
    import cv2

    text, _, folder, _ = report
    assert "![participant flow (STARD)" in text and "(flow.png)" in text
    image = cv2.imread(str(folder / "flow.png"))
    assert image is not None and image.shape[1] >= 600 and (image < 128).any()  # drawn, not blank


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_report_page_renders_with_its_figures_at_a_normal_window_width(report, tmp_path):
    import cv2

    _, html, folder, _ = report
    (folder / "report.html").write_text(html)
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,5000",
                    f"--screenshot={shot}", (folder / "report.html").as_uri()], check=True, capture_output=True,
                   timeout=120)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (5000, 1280)
    # the figures are shown (their blue-grey boxes and curves), not broken-image icons
    figure_pixels = (image[..., 0].astype(int) - image[..., 2] > 40).sum()
    assert figure_pixels > 2000


def test_each_folds_settings_come_from_its_run():
    from experiments.study_tables import fold_settings

    params = {"best_learning_rate": "0.002", "best_weight_decay": "0.0001", "best_dropout": "0.3",
              "best_batch_size": "16", "best_augment_strength": "0.5", "best_window_level": "400.0",
              "best_window_width": "1800.0", "final_epochs": "10"}
    folds = {0: {"params": params, "metrics": {"final_training_seconds": 241.4}},
             1: {"params": params | {"final_epochs": "7"}, "metrics": {"trials_pruned": 2.0,
                                                                        "best_inner_val_patient_auc": 0.91}}}
    text = to_markdown(fold_settings(folds, {"trials": "5", "inner_folds": "1", "pruner": "median"}))
    assert "| 0 | 0.002 | 0.0001 | 0.3 | 16 | 0.5 | 400.0 / 1800.0 | 10 | 5 (0 pruned) |  | 241 |" in text
    assert "| 1 | 0.002 | 0.0001 | 0.3 | 16 | 0.5 | 400.0 / 1800.0 | 7 | 5 (2 pruned) | 0.91 | not logged |" in text
    assert "Optuna TPE, 5 trials per fold" in text and "learning_rate 1e-5 to 3e-3, log" in text


def test_centres_are_counted_from_the_manifest_column():
    from experiments.study_tables import limitations

    model = {"P1": {"label": 1}, "P2": {"label": 0}, "P3": {"label": 0}}
    cohort = {pid: SimpleNamespace(centre=centre) for pid, centre in (("P1", "A"), ("P2", ""), ("P3", "B"))}
    assert "2 centres in the manifest" in limitations({"folds": "2"}, model, cohort, False)
    one = {pid: SimpleNamespace(centre="") for pid in model}
    assert "single centre" in limitations({"folds": "2"}, model, one, False)
