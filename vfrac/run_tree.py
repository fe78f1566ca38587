"""The names of vfrac's MLflow run tree: tags, roles and artifact paths, for every writer and reader.

A CV run (role "cv") holds one run per outer fold (role "fold"), each holding its
tuning trials (role "trial"), and the final model's run (role "final"); a validation on
another cohort is a run of its own (role "validation"). Tag values are strings. Names
only: `experiments/` writes and reads the tree, `explain/` reads it.
"""

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI
ROLE_TAG = "vfrac.role"
DONE_TAG = "vfrac.done"  # "1" once a run's work is complete
FOLD_TAG = "vfrac.fold"  # the outer fold of a fold run and its trials
TRIAL_TAG = "vfrac.trial"  # a trial's place in its fold's sequence
RUN_KEY_TAG = "vfrac.run_key"  # settings, cohort and code: a rerun with the same key continues the run
SETTINGS_KEY_TAG = "vfrac.settings_key"  # settings and cohort only: runs of other code versions compared
COHORT_HASH_TAG = "vfrac.cohort_hash"
TRAINED_COHORT_HASH_TAG = "vfrac.trained_cohort_hash"  # on a validation: the cohort the model learned on
GIT_COMMIT_TAG = "vfrac.git_commit"
CODE_VERSION_TAG = "vfrac.code_version"
PRESET_TAG = "vfrac.preset"
POOLED_TAG = "vfrac.pooled"  # set once the CV's pooled results are all logged
FAILURE_TAG = "vfrac.failure"  # why a run ended FAILED or KILLED
REGISTERED_TAG = "vfrac.registered"  # NAME/VERSION of the final model in the Model Registry
VALIDATION_KEY_TAG = "vfrac.validation_key"  # the model's run(s) and the flag's rule, hashed
MODEL_TAG = "vfrac.model"  # on a validation: the model's URI
MODEL_RUN_ID_TAG = "vfrac.model_run_id"
CV_RUN_ID_TAG = "vfrac.cv_run_id"
VALIDATION_VERSION_TAG = "vfrac.validation."  # + cohort hash: a model version's validation run

CV_ROLE, FOLD_ROLE, TRIAL_ROLE, FINAL_ROLE, VALIDATION_ROLE = "cv", "fold", "trial", "final", "validation"

SPLITS = "splits.json"  # on the CV run; logged last of its set-up files, so its presence says the rest is there
CONFIG = "config.json"
SUMMARY = "summary.md"
EXCLUDED = "excluded.csv"  # patients and rows left out by --skip-bad
SLICE_PREDICTIONS = "predictions/slices.csv"  # on fold runs and, pooled, the CV run
PATIENT_PREDICTIONS = "predictions/patients.csv"
BASELINE_PREDICTIONS = "predictions/baseline.csv"
MODEL = "model"  # the MLflow model of a fold or final run
READER_STUDIES = "reader_study"  # on the CV run: study-{id}/ per analysed reader study
RECALIBRATION = "recalibration"  # on the CV run: {method}.json
