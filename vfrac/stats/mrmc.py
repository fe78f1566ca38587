"""Multi-reader multi-case (MRMC) comparison of reader AUCs: Obuchowski-Rockette with Hillis' degrees of freedom.

A reader study asks whether readers do better with one reading condition (aided by the
model) than another (unaided), generalising to other readers and other cases: random
readers and random cases (RRRC). Each reader's AUC in each condition is the empirical
(Mann-Whitney) AUC of their confidence ratings, ties counted half; the error covariances
of those AUCs are estimated by jackknifing cases; the test is the OR F test with Hillis'
(2007) denominator degrees of freedom. Checked against the published analysis of the
Van Dyke data (OR-DBM MRMC 2.51, MRMCaov). Fixed readers (FRRC) is given beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Components:
    """OR variance components and error covariances (ANOVA-type estimates)."""

    var_r: float
    var_tr: float
    cov1: float  # same reader, other condition
    cov2: float  # same condition, other reader
    cov3: float  # other condition, other reader
    var_error: float


@dataclass(frozen=True)
class MrmcResult:
    auc: np.ndarray  # (conditions, readers)
    mean_auc: np.ndarray  # per condition
    difference: float  # condition 0 minus condition 1
    components: Components
    ms_t: float
    ms_tr: float
    f: float  # RRRC
    ddf: float
    p: float
    se: float
    ci: tuple[float, float]
    single_se: np.ndarray  # per condition, RRRC
    single_df: np.ndarray
    single_ci: np.ndarray  # (conditions, 2)
    fixed_readers_chi2: float  # FRRC
    fixed_readers_p: float
    fixed_readers_ci: tuple[float, float]


def pair_scores(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(..., diseased, non-diseased) 1 where the diseased case is rated higher, 1/2 on a tie, else 0."""
    positive, negative = ratings[..., truth == 1], ratings[..., truth == 0]
    difference = positive[..., :, None] - negative[..., None, :]
    return (difference > 0) + 0.5 * (difference == 0)


def jackknife_aucs(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(conditions, readers, cases): each AUC with one case left out."""
    scores = pair_scores(ratings, truth)
    n_pos, n_neg = scores.shape[-2:]
    row, column = scores.sum(axis=-1), scores.sum(axis=-2)  # per diseased, per non-diseased case
    total = scores.sum(axis=(-2, -1))[..., None]
    without_positive = (total - row) / ((n_pos - 1) * n_neg)
    without_negative = (total - column) / (n_pos * (n_neg - 1))
    out = np.empty(ratings.shape, float)
    out[..., truth == 1], out[..., truth == 0] = without_positive, without_negative
    return out


def obuchowski_rockette(ratings, truth, alpha: float = 0.05) -> MrmcResult:
    """ratings: (conditions, readers, cases) confidence scores, higher = more likely diseased; truth: (cases,)
    0/1. Two conditions: the difference is condition 0 minus condition 1."""
    ratings, truth = np.asarray(ratings, float), np.asarray(truth).astype(int)
    if ratings.ndim != 3 or ratings.shape[0] != 2 or ratings.shape[1] < 2:
        raise ValueError("ratings must be (2 conditions, >= 2 readers, cases)")
    if ratings.shape[2] != truth.size or not (truth == 1).any() or not (truth == 0).any():
        raise ValueError("truth must give each case 0 or 1, with cases of both")
    n_t, n_r, n_k = ratings.shape
    auc = pair_scores(ratings, truth).mean(axis=(-2, -1))
    pseudo = jackknife_aucs(ratings, truth).reshape(n_t * n_r, n_k)
    centred = pseudo - pseudo.mean(axis=1, keepdims=True)
    cov = (n_k - 1) / n_k * centred @ centred.T
    condition, reader = np.divmod(np.arange(n_t * n_r), n_r)
    same_t, same_r = condition[:, None] == condition[None, :], reader[:, None] == reader[None, :]
    var_error = float(np.mean(np.diag(cov)))
    cov1 = float(cov[~same_t & same_r].mean())
    cov2 = float(cov[same_t & ~same_r].mean())
    cov3 = float(cov[~same_t & ~same_r].mean())
    mean_t, mean_r, grand = auc.mean(axis=1), auc.mean(axis=0), auc.mean()
    ms_t = n_r * float(((mean_t - grand) ** 2).sum()) / (n_t - 1)
    ms_r = n_t * float(((mean_r - grand) ** 2).sum()) / (n_r - 1)
    ms_tr = float(((auc - mean_t[:, None] - mean_r[None, :] + grand) ** 2).sum()) / ((n_t - 1) * (n_r - 1))
    var_tr = ms_tr - var_error + cov1 + cov2 - cov3
    components = Components(
        var_r=(ms_r - var_tr - var_error - (n_t - 1) * cov1 + cov2 + (n_t - 1) * cov3) / n_t,
        var_tr=var_tr, cov1=cov1, cov2=cov2, cov3=cov3, var_error=var_error)
    denominator = ms_tr + n_r * max(cov2 - cov3, 0.0)
    ddf = _hillis_df(denominator, ms_tr, (n_t - 1) * (n_r - 1))
    f = _ratio(ms_t, denominator)
    difference = float(mean_t[0] - mean_t[1])
    se = float(np.sqrt(2 * denominator / n_r))
    half = stats.t.ppf(1 - alpha / 2, ddf) * se
    single_se, single_df, single_ci = [], [], []
    for t in range(n_t):  # each condition alone, its own readers' spread and covariance
        within = cov[np.ix_(condition == t, condition == t)]
        cov2_t = float(within[~np.eye(n_r, dtype=bool)].mean())
        ms_r_t = float(((auc[t] - mean_t[t]) ** 2).sum()) / (n_r - 1)
        denominator_t = ms_r_t + n_r * max(cov2_t, 0.0)
        df_t = _hillis_df(denominator_t, ms_r_t, n_r - 1)
        se_t = float(np.sqrt(denominator_t / n_r))
        single_se.append(se_t)
        single_df.append(df_t)
        single_ci.append(mean_t[t] + np.array([-1, 1]) * stats.t.ppf(1 - alpha / 2, df_t) * se_t)
    fixed = var_error - cov1 + (n_r - 1) * max(cov2 - cov3, 0.0)
    chi2 = _ratio((n_t - 1) * ms_t, fixed)
    fixed_half = stats.norm.ppf(1 - alpha / 2) * np.sqrt(max(2 * fixed / n_r, 0.0))
    return MrmcResult(auc=auc, mean_auc=mean_t, difference=difference, components=components, ms_t=ms_t,
                      ms_tr=ms_tr, f=f, ddf=ddf, p=_f_sf(f, n_t - 1, ddf), se=se,
                      ci=(difference - half, difference + half), single_se=np.array(single_se),
                      single_df=np.array(single_df), single_ci=np.array(single_ci), fixed_readers_chi2=chi2,
                      fixed_readers_p=float(stats.chi2.sf(chi2, n_t - 1)),
                      fixed_readers_ci=(difference - fixed_half, difference + fixed_half))


def _hillis_df(denominator: float, mean_square: float, df: int) -> float:
    """Hillis' denominator degrees of freedom; infinite when the readers' mean square is 0 (readers agree exactly,
    as small or simulated studies can), where the F test becomes a chi-square test."""
    return denominator ** 2 / (mean_square ** 2 / df) if mean_square > 0 else np.inf


def _f_sf(f: float, dfn: int, dfd: float) -> float:
    """P(F > f), with the chi-square limit for infinite denominator degrees of freedom."""
    return float(stats.chi2.sf(f * dfn, dfn) if np.isinf(dfd) else stats.f.sf(f, dfn, dfd))


def _ratio(top: float, bottom: float) -> float:
    """A test statistic's top / bottom; where every AUC is the same (a perfect score throughout) the error
    variance is 0: no difference gives 0, any difference infinity."""
    return top / bottom if bottom > 0 else (0.0 if top == 0 else np.inf)
