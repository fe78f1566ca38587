"""The reader study without a CV run: its design draws, the reading app's rules (Flask's test client) and the
analysis, recomputed here by hand-written formulas from made-up answers stored in a database."""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import func, select

from explain.reader_study import schema
from explain.reader_study.__main__ import main as reader_study
from explain.reader_study.analysis import analyse, click_hit, readings, score, section
from explain.reader_study.answers import Answer, Refused, position, record
from explain.reader_study.app import create_app
from explain.reader_study.create import cranial_first
from explain.reader_study.design import decoy_cases, reading_orders, stratified_sample, token_digest
from tests.explain.reader_study_data import FEATURES, SIDE, answer_all, make_study
from vfrac.errors import InputError

M, B = "malignant", "benign"


# -- design ----------------------------------------------------------------------------------------

def test_cases_are_drawn_in_proportion_with_every_kind_at_least_once():
    strata = ["benign, model right"] * 6 + ["malignant, model right"] * 3 + ["benign, model wrong"]
    chosen = stratified_sample(strata, 5, np.random.default_rng(0))
    assert Counter(strata[i] for i in chosen) == {"benign, model right": 3, "malignant, model right": 1,
                                                  "benign, model wrong": 1}
    assert len(set(chosen)) == 5 and chosen == sorted(chosen)
    assert chosen == stratified_sample(strata, 5, np.random.default_rng(0))  # the seed decides
    assert stratified_sample(strata, None, np.random.default_rng(0)) == list(range(10))
    with pytest.raises(ValueError, match="at least 3"):
        stratified_sample(strata, 2, np.random.default_rng(0))


def test_decoys_and_orders():
    strata = ["a"] * 8 + ["b"] * 2
    decoys = decoy_cases(strata, 0.2, np.random.default_rng(1))
    assert sum(decoys) == 2 and len(decoys) == 10
    assert sum(decoy_cases(strata, 0.0, np.random.default_rng(1))) == 0
    with pytest.raises(ValueError):
        decoy_cases(strata, 1.0, np.random.default_rng(1))
    orders = reading_orders(10, 3, np.random.default_rng(2))
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3  # each reader their own order
    assert token_digest("abc") != "abc" and len(token_digest("abc")) == 64


# -- the reading app's rules -------------------------------------------------------------------------

@pytest.fixture
def study(tmp_path):
    return make_study(f"sqlite:///{tmp_path}/study.db", [M, B, M], [M, M, B], [False, True, False])


def answer_count(study) -> int:
    with study.engine.connect() as db:
        return db.execute(select(func.count()).select_from(schema.answers)).scalar()


def image_id(study, case: int, kind: str) -> int:
    with study.engine.connect() as db:
        return db.execute(select(schema.images.c.id).where((schema.images.c.case_id == study.case_ids[case])
                                                           & (schema.images.c.kind == kind))).scalars().first()


def test_a_reader_answers_unaided_then_sees_the_model(study):
    client = create_app(study.engine, study.study_id).test_client()
    link = f"/r/{study.tokens[0]}"
    first = study.orders[0][0]
    page = client.get(link).get_data(as_text=True)
    assert "Case 1 of 3" in page and f"VF{first + 1:04d}" in page and "Step 1" in page
    assert "probability" not in page and page.count("/image/") == 2 * 2  # two windows x two slices, no map
    unaided = {"call": M, "confidence": "4"}
    assert client.post(f"{link}/case/{study.codes[first]}/unaided", data=unaided).status_code == 303
    page = client.get(link).get_data(as_text=True)
    assert "Step 2" in page and "probability of malignancy <b>0.80</b>" in page and "call <b>malignant</b>" in page
    assert page.count("/image/") == 4 * 2 and "soft tissue mass" in page  # maps now; the cohort's features
    aided = {"call": B, "confidence": "2", "map_rating": "partly", "map_feature": FEATURES[0], "click_slice": "1",
             "click_x": "0.25", "click_y": "0.75"}
    assert client.post(f"{link}/case/{study.codes[first]}/aided", data=aided).status_code == 303
    assert "Case 2 of 3" in client.get(link).get_data(as_text=True)
    with study.engine.connect() as db:
        stored = db.execute(select(schema.answers).order_by(schema.answers.c.id)).all()
    assert [(a.step, a.call, a.confidence, a.map_rating, a.map_feature, a.click_slice, a.click_x, a.click_y)
            for a in stored] == [("unaided", M, 4, None, None, None, None, None),
                                 ("aided", B, 2, "partly", FEATURES[0], 1, 0.25, 0.75)]
    assert all(a.reader_id == study.reader_ids[0] and not a.simulated for a in stored)


def test_maps_open_only_once_the_unaided_answer_is_stored(study):
    client = create_app(study.engine, study.study_id).test_client()
    link, first = f"/r/{study.tokens[0]}", study.orders[0][0]
    assert client.get(f"{link}/image/{image_id(study, first, 'bone')}.png").status_code == 200
    for kind in ("map", "other"):
        assert client.get(f"{link}/image/{image_id(study, first, kind)}.png").status_code == 403
    client.post(f"{link}/case/{study.codes[first]}/unaided", data={"call": B, "confidence": "3"})
    shown = client.get(f"{link}/image/{image_id(study, first, 'map')}.png")
    assert shown.status_code == 200 and shown.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown.headers["Cache-Control"] == "no-store" and shown.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path, form, status", [
    ("/r/WRONG-TOKEN", None, 403),  # a wrong token opens nothing
    ("/r/WRONG-TOKEN/case/CODE/unaided", {"call": M, "confidence": "3"}, 403),
    ("/r/TOKEN/case/nosuchcase/unaided", {"call": M, "confidence": "3"}, 404),  # a tampered case id
    ("/r/TOKEN/case/LATER/unaided", {"call": M, "confidence": "3"}, 409),  # not the case to read now
    ("/r/TOKEN/case/CODE/aided", {"call": M, "confidence": "3", "map_rating": "partly", "click_slice": "0",
                                  "click_x": "0.5", "click_y": "0.5"}, 409),  # aided before unaided
    ("/r/TOKEN/case/CODE/final", {"call": M, "confidence": "3"}, 404),
    ("/r/TOKEN/case/CODE/unaided", {"call": M, "confidence": "6"}, 422),  # out of range
    ("/r/TOKEN/case/CODE/unaided", {"call": M, "confidence": "0"}, 422),
    ("/r/TOKEN/case/CODE/unaided", {"call": "maybe", "confidence": "3"}, 422),
    ("/r/TOKEN/case/CODE/unaided", {"call": M}, 422),
    ("/r/TOKEN/image/LESION.png", None, 404),  # the feature masks are never served
    ("/r/TOKEN/image/999999.png", None, 404),
])
def test_refused_requests_write_nothing(study, path, form, status):
    client = create_app(study.engine, study.study_id).test_client()
    first, later = study.orders[0][0], study.orders[0][1]
    study_with_lesion = make_study(f"{study.engine.url}", [M], [M], [False], lesion=np.eye(SIDE, dtype=bool))
    path = (path.replace("TOKEN", study.tokens[0]).replace("LATER", study.codes[later])
            .replace("CODE", study.codes[first])
            .replace("LESION", str(image_id(study_with_lesion, 0, "lesion"))))
    before = answer_count(study)
    response = client.post(path, data=form) if form is not None else client.get(path)
    assert response.status_code == status
    assert answer_count(study) == before


def test_a_stored_answer_cannot_be_given_again_or_changed(study):
    client = create_app(study.engine, study.study_id).test_client()
    link, first = f"/r/{study.tokens[0]}", study.orders[0][0]
    client.post(f"{link}/case/{study.codes[first]}/unaided", data={"call": M, "confidence": "5"})
    again = client.post(f"{link}/case/{study.codes[first]}/unaided", data={"call": B, "confidence": "1"})
    assert again.status_code == 409 and "cannot change" in again.get_data(as_text=True)
    bad_aided = {"call": M, "confidence": "3", "map_rating": "partly", "click_slice": "0"}
    for extra, status in (({"click_x": "1.5", "click_y": "0.5"}, 422), ({}, 422),
                          ({"click_x": "0.5", "click_y": "0.5", "map_rating": "great"}, 422),
                          ({"click_x": "0.5", "click_y": "0.5", "map_feature": "aura"}, 422),
                          ({"click_x": "0.5", "click_y": "0.5", "click_slice": "2"}, 422)):
        assert client.post(f"{link}/case/{study.codes[first]}/aided", data=bad_aided | extra).status_code == status
    assert answer_count(study) == 1


def test_each_reader_sees_only_their_own_worklist(study):
    client = create_app(study.engine, study.study_id).test_client()
    mine, theirs = f"/r/{study.tokens[0]}", f"/r/{study.tokens[1]}"
    client.post(f"{mine}/case/{study.codes[study.orders[0][0]]}/unaided", data={"call": M, "confidence": "5"})
    page = client.get(theirs).get_data(as_text=True)
    assert f"VF{study.orders[1][0] + 1:04d}" in page and "Step 1" in page and "Your reading" not in page
    # reader 1 is now in the aided step of their first case; its maps stay closed to reader 2, who has not answered
    assert client.get(f"{theirs}/image/{image_id(study, study.orders[0][0], 'map')}.png").status_code == 403
    other_study = make_study(f"{study.engine.url}", [M], [M], [False], readers=1)
    assert client.get(f"/r/{other_study.tokens[0]}").status_code == 403  # a link of another study
    assert client.get(f"{mine}/image/{image_id(other_study, 0, 'bone')}.png").status_code == 404


def test_a_reader_resumes_at_the_next_case_on_a_new_connection(study, tmp_path):
    record(study.engine, study.reader_ids[0], study.codes[study.orders[0][0]], "unaided", Answer(M, 3))
    study.engine.dispose()
    reopened = schema.open_database(f"sqlite:///{tmp_path}/study.db")
    with reopened.connect() as db:
        now = position(db, study.reader_ids[0])
    assert (now.case.code, now.step, now.number, now.total) == (study.codes[study.orders[0][0]], "aided", 1, 3)


def test_two_readers_at_once_and_one_answer_sent_twice(study):
    errors = []

    def read(reader):
        try:
            answer_all(study, reader, {k: (M, 3) for k in range(3)}, {k: (M, 4) for k in range(3)})
        except Exception as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    threads = [threading.Thread(target=read, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and answer_count(study) == 2 * 3 * 2
    with pytest.raises(Refused) as refused:
        record(study.engine, study.reader_ids[0], study.codes[0], "aided", Answer(M, 4, "partly", "", 0, 0.5, 0.5))
    assert refused.value.status == 409 and answer_count(study) == 12


# -- the analysis, by hand -----------------------------------------------------------------------------

LABELS = [M, M, M, M, B, B, B, B]
MODEL = [M, M, M, B, B, B, M, B]
DECOYS = [False, False, False, False, False, False, True, True]
UNAIDED = [  # reader -> case -> (call, confidence)
    [(M, 5), (M, 3), (B, 2), (B, 1), (B, 4), (M, 2), (B, 5), (B, 3)],
    [(M, 4), (B, 2), (M, 3), (B, 3), (B, 5), (B, 2), (M, 1), (B, 4)],
    [(M, 3), (M, 4), (B, 1), (M, 2), (B, 3), (B, 4), (B, 2), (M, 2)],
]
AIDED = [
    [(M, 5), (M, 4), (M, 3), (B, 2), (B, 5), (B, 3), (M, 3), (B, 3)],
    [(M, 5), (M, 3), (M, 4), (B, 2), (B, 5), (B, 3), (B, 2), (B, 4)],
    [(M, 4), (M, 4), (M, 2), (M, 2), (B, 4), (B, 4), (B, 2), (B, 3)],
]
RATINGS = [
    ["on the lesion", "on the lesion", "partly", "on the lesion", "off the lesion", "partly", "off the lesion",
     "partly"],
    ["on the lesion", "partly", "partly", "on the lesion", "partly", "partly", "off the lesion", "on the lesion"],
    ["on the lesion", "on the lesion", "on the lesion", "off the lesion", "partly", "partly", "partly",
     "off the lesion"],
]


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def fisher_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Sum of the hypergeometric probabilities of the tables with these margins no more likely than this one."""
    row, col, n = a + b, a + c, a + b + c + d

    def p(x):
        return math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)

    observed = p(a)
    return sum(p(x) for x in range(max(0, row + col - n), min(row, col) + 1) if p(x) <= observed * (1 + 1e-9))


def mann_whitney(scores, truth) -> float:
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.fixture
def answered(tmp_path):
    lesion = np.zeros((SIDE, SIDE), bool)
    lesion[:3, :3] = True
    made = make_study(f"sqlite:///{tmp_path}/analysis.db", LABELS, MODEL, DECOYS, readers=3, lesion=lesion,
                      ratios=[2.0, 1.0, 0.5, 3.0, 1.5, 0.5, 0.2, 0.3])
    clicks = [(0.1, 0.1), (0.9, 0.9), (0.2, 0.1), (0.1, 0.3), (0.5, 0.5), (0.05, 0.05), (0.8, 0.1), (0.1, 0.2)]
    for r in range(3):
        answer_all(made, r, UNAIDED[r], AIDED[r], RATINGS[r], clicks)
    return made, clicks, lesion


def test_calls_per_reader_and_pooled_by_hand(answered):
    made, _, _ = answered
    found = analyse(*readings(made.engine, made.study_id))
    truth = [label == M for label in LABELS]
    rows = {row["reader"]: row for row in found["calls"]}
    for reader, key in ((0, 1), (1, 2), (2, 3), (None, "pooled")):
        readers = range(3) if reader is None else [reader]
        for step, given in (("unaided", UNAIDED), ("aided", AIDED)):
            calls = [(given[r][k][0] == M, truth[k]) for r in readers for k in range(8)]
            tp = sum(c and t for c, t in calls)
            tn = sum(not c and not t for c, t in calls)
            positives = sum(t for _, t in calls)
            assert rows[key][f"sensitivity_{step}"] == pytest.approx(tp / positives)
            assert rows[key][f"specificity_{step}"] == pytest.approx(tn / (len(calls) - positives))
            assert rows[key][f"accuracy_{step}"] == pytest.approx((tp + tn) / len(calls))
        right = [(UNAIDED[r][k][0] == LABELS[k], AIDED[r][k][0] == LABELS[k]) for r in readers for k in range(8)]
        helped = sum(not u and a for u, a in right)
        harmed = sum(u and not a for u, a in right)
        assert (rows[key]["helped"], rows[key]["harmed"]) == (helped, harmed)
        assert rows[key]["mcnemar_p"] == pytest.approx(mcnemar_exact(harmed, helped))
    assert (rows["pooled"]["helped"], rows["pooled"]["harmed"]) == (6, 1)  # counted off the tables above


def test_reader_auc_from_the_confidence_scale_by_hand(answered):
    made, _, _ = answered
    found = analyse(*readings(made.engine, made.study_id))["mrmc"]
    truth = [label == M for label in LABELS]
    for step, given in (("unaided", UNAIDED), ("aided", AIDED)):
        by_hand = [mann_whitney([score(*given[r][k]) for k in range(8)], truth) for r in range(3)]
        assert found[f"reader_auc_{step}"] == pytest.approx(by_hand)
        assert found[f"auc_{step}"] == pytest.approx(np.mean(by_hand))
    assert found["difference"] == pytest.approx(found["auc_aided"] - found["auc_unaided"])
    assert found["readers"] == 3 and found["cases"] == 8 and 0 < found["p"] < 1
    assert [score(M, 5), score(M, 1), score(B, 1), score(B, 5)] == [10, 6, 5, 1]


def test_map_ratings_real_against_decoy_by_hand(answered):
    made, _, _ = answered
    found = analyse(*readings(made.engine, made.study_id))["map_ratings"]
    real = [RATINGS[r][k] for r in range(3) for k in range(8) if not DECOYS[k]]
    decoy = [RATINGS[r][k] for r in range(3) for k in range(8) if DECOYS[k]]
    on_real, on_decoy = real.count("on the lesion"), decoy.count("on the lesion")
    assert (found["real_on_lesion"], found["real_rated"], found["decoy_on_lesion"], found["decoy_rated"]) == \
        (on_real, 18, on_decoy, 6) == (8, 18, 1, 6)
    assert found["fisher_p"] == pytest.approx(fisher_two_sided(on_real, 18 - on_real, on_decoy, 6 - on_decoy))
    assert found["by_rating"] == {"real": Counter(real), "decoy": Counter(decoy)}
    assert ["partly", "8", "2"] in next(block for block in section(analyse(*readings(made.engine, made.study_id)))
                                        if block[0] == "table" and block[1][0] == "rating")[2]


def test_rating_agreement_by_hand(answered):
    made, _, _ = answered
    found = analyse(*readings(made.engine, made.study_id))["rating_agreement"]
    counts = np.array([[sum(RATINGS[r][k] == c for r in range(3)) for c in schema.RATINGS] for k in range(8)])
    n = 3
    agreement = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / counts.sum()
    chance = (shares ** 2).sum()
    assert found["cases"] == 8
    assert found["kappa"] == pytest.approx((agreement.mean() - chance) / (1 - chance))


def test_pointing_game_of_the_clicks_by_hand(answered):
    made, clicks, lesion = answered
    found = {row["reader"]: row for row in analyse(*readings(made.engine, made.study_id))["pointing"]}
    # the lesion is rows and columns 0-2 of 8; the tolerance (15/224 of the side) rounds to 1 pixel: up to column 3
    hits = [int(x * SIDE) <= 3 and int(y * SIDE) <= 3 for x, y in clicks]
    assert hits == [True, False, True, True, False, True, False, True]
    assert found["pooled"]["clicks"] == 24 and found["pooled"]["hits"] == 3 * sum(hits)
    assert found[1]["hit_rate"] == pytest.approx(sum(hits) / 8)
    assert found[1]["map_energy_ratio"] == pytest.approx(np.mean([2.0, 1.0, 0.5, 3.0, 1.5, 0.5]))  # real maps only
    assert click_hit(lesion, 0.1, 0.1, has_lesion=False) is None
    assert click_hit(np.zeros_like(lesion), 0.1, 0.1, has_lesion=True) == 0.0


def test_an_unfinished_study_is_analysed_on_its_finished_readings(tmp_path):
    made = make_study(f"sqlite:///{tmp_path}/partial.db", [M, B, M], [M, B, B], [False] * 3, readers=1)
    record(made.engine, made.reader_ids[0], made.codes[made.orders[0][0]], "unaided", Answer(M, 4))
    found = analyse(*readings(made.engine, made.study_id))
    assert (found["readings"], found["finished_readings"], found["calls"], found["mrmc"]) == (1, 0, [], None)
    empty = make_study(f"sqlite:///{tmp_path}/empty.db", [M], [M], [False], readers=1)
    with pytest.raises(Exception, match="no answers yet"):
        analyse(*readings(empty.engine, empty.study_id))


def test_the_study_on_postgresql_with_two_readers_at_once(servers):
    """The database a lab shares between machines: the same rules and numbers as on SQLite."""
    url = servers.new_database(f"readers_{uuid.uuid4().hex[:8]}")
    made = make_study(url, LABELS, MODEL, DECOYS, readers=2)
    threads = [threading.Thread(target=answer_all, args=(made, r, UNAIDED[r], AIDED[r], RATINGS[r])) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with pytest.raises(Refused) as refused:
        record(made.engine, made.reader_ids[1], made.codes[0], "unaided", Answer(M, 1))
    assert refused.value.status == 409
    found = analyse(*readings(made.engine, made.study_id))
    assert found["readings"] == found["finished_readings"] == 16
    assert found["map_ratings"]["real_on_lesion"] == 5  # reader 1: 3, reader 2: 2 (the tables above)
    with pytest.raises(InputError) as wrong:
        schema.open_database(servers.postgres_url("nosuchdb", password="not-the-password"))
    assert "not-the-password" not in str(wrong.value) and "***" in str(wrong.value)


# -- the command's refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["create", "--run", "abc", "--readers", "0"], "--readers must be >= 1"),
    (["create", "--run", "abc", "--readers", "2", "--cases", "0"], "--cases must be >= 1"),
    (["create", "--run", "abc", "--readers", "2", "--decoy-share", "1"], "--decoy-share must be in [0, 1)"),
    (["serve", "--study", "99"], "no reader study 99"),
    (["links", "--study", "99", "--reader", "1"], "study 99 has no reader 1"),
    (["analyse", "--study", "99", "--no-log", "--out", "OUT"], "no reader study 99"),
])
def test_the_command_refuses_bad_input_in_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert reader_study([*argv, "--database", f"sqlite:///{tmp_path}/studies.db"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_a_new_link_replaces_the_old_one(study, capsys):
    old = study.tokens[0]
    assert reader_study(["links", "--study", str(study.study_id), "--reader", "1",
                         "--database", str(study.engine.url)]) == 0
    new = capsys.readouterr().out.split("/r/", 1)[1].split()[0]
    client = create_app(study.engine, study.study_id).test_client()
    assert client.get(f"/r/{old}").status_code == 403 and client.get(f"/r/{new}").status_code == 200


def test_spare_places_go_to_the_strata_that_lack_the_most():
    strata = ["a"] * 9 + ["b"] * 45 + ["c"] * 46  # quotas of 10: 0.9, 4.5, 4.6
    chosen = stratified_sample(strata, 10, np.random.default_rng(0))
    assert Counter(strata[i] for i in chosen) == {"a": 1, "b": 4, "c": 5}


def test_slices_are_shown_from_head_to_feet():
    superior = np.diag([2.5, 0.7, 0.7, 1.0])  # z rises toward the head (LPS S)
    superior[2, 0], superior[0, 0] = 2.5, 0.0
    inferior = superior.copy()
    inferior[2, 0] = -2.5
    slices = np.array([12, 10, 11])
    assert slices[cranial_first(slices, superior)].tolist() == [12, 11, 10]
    assert slices[cranial_first(slices, inferior)].tolist() == [10, 11, 12]


def test_a_reader_who_stopped_early_leaves_the_block_instead_of_emptying_it(tmp_path):
    made = make_study(f"sqlite:///{tmp_path}/dropout.db", LABELS, MODEL, DECOYS, readers=4)
    for r in range(3):
        answer_all(made, r, UNAIDED[r], AIDED[r], RATINGS[r])
    for k in made.orders[3][:2]:  # the fourth reader finished two cases
        record(made.engine, made.reader_ids[3], made.codes[k], "unaided", Answer(M, 3))
        record(made.engine, made.reader_ids[3], made.codes[k], "aided", Answer(M, 3, "partly", "", 0, 0.5, 0.5))
    found = analyse(*readings(made.engine, made.study_id))
    assert (found["mrmc"]["readers"], found["mrmc"]["cases"]) == (3, 8)
    assert (found["rating_agreement"]["readers"], found["rating_agreement"]["cases"]) == (3, 8)
    assert found["readings"] == 3 * 8 + 2  # the calls and ratings still count every finished reading


def test_an_unexpected_error_is_logged_without_the_link_and_large_forms_are_refused(study, monkeypatch, caplog):
    app = create_app(study.engine, study.study_id)
    client = app.test_client()
    link, code = f"/r/{study.tokens[0]}", study.codes[study.orders[0][0]]
    assert client.post(f"{link}/case/{code}/unaided", data={"call": M, "confidence": "3",
                                                            "padding": "x" * 100_000}).status_code == 413

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("explain.reader_study.app.record", broken)
    assert client.post(f"{link}/case/{code}/unaided", data={"call": M, "confidence": "3"}).status_code == 500
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Exception on /r/***/case/" in logged and study.tokens[0] not in logged
    assert answer_count(study) == 0
