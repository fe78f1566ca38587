"""The study's numbers: metrics with intervals, paired and unpaired tests, rater agreement, and fold ensembles."""
