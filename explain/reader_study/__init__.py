"""A reader study of a CV run: do the model's maps help radiologists, and can they tell a real map from a decoy?

`python -m explain.reader_study create` draws the cases from a run's test patients and
stores them, each reader's order and the decoys in a database; `serve` is the reading
app (unaided, then aided reading, one private link per reader); `analyse` compares
aided with unaided reading (multi-reader multi-case) and the ratings of real and decoy
maps, and logs the result to the CV run.
"""
