"""Which cases, which decoys, which order: the study's design, drawn from a seed (pure functions).

Cases are stratified by the truth and by whether the model's call was right, so a
study of a few cases still holds the model's errors in the cohort's proportion
(at least one of each kind that exists); decoys are spread over the same strata.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np


def stratified_sample(strata: list[str], count: int | None, rng: np.random.Generator) -> list[int]:
    """Indices of `count` items (all when None), each stratum in proportion, every stratum at least once.

    Largest remainders decide the rounding; the indices come back sorted.
    """
    strata = list(strata)
    if count is None or count >= len(strata):
        return list(range(len(strata)))
    names = sorted(set(strata))
    if count < len(names):
        raise ValueError(f"{count} cases cannot hold one of each of the {len(names)} kinds of case "
                         f"({', '.join(names)}); ask for at least {len(names)}")
    members = {name: [i for i, s in enumerate(strata) if s == name] for name in names}
    quota = {name: count * len(members[name]) / len(strata) for name in names}
    taken = {name: max(1, int(quota[name])) for name in names}
    spare = count - sum(taken.values())
    for name in sorted(names, key=lambda n: (-(quota[n] - taken[n]), n)):  # what each stratum still lacks
        if spare <= 0:
            break
        if taken[name] < len(members[name]):
            taken[name] += 1
            spare -= 1
    while spare < 0:  # the minimum of one per stratum overfilled: take back from the largest
        name = max(names, key=lambda n: (taken[n], n))
        taken[name] -= 1
        spare += 1
    chosen = [int(i) for name in names for i in rng.choice(members[name], taken[name], replace=False)]
    return sorted(chosen)


def decoy_cases(strata: list[str], share: float, rng: np.random.Generator) -> list[bool]:
    """Which of the cases show a decoy map: round(share x cases), spread over the strata as the cases are."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the decoy share must be in [0, 1), received {share}")
    count = int(round(share * len(strata)))
    if count == 0:
        return [False] * len(strata)
    chosen = set(stratified_sample(strata, count, rng)) if count >= len(set(strata)) else \
        {int(i) for i in rng.choice(len(strata), count, replace=False)}
    return [i in chosen for i in range(len(strata))]


def reading_orders(cases: int, readers: int, rng: np.random.Generator) -> list[list[int]]:
    """Each reader's own random order of the cases (case positions 0..cases-1)."""
    if readers < 1:
        raise ValueError(f"a study needs at least one reader, received {readers}")
    return [[int(i) for i in rng.permutation(cases)] for _ in range(readers)]


def new_token() -> str:
    """A reader's private link token: 128 random bits."""
    return secrets.token_urlsafe(16)


def token_digest(token: str) -> str:
    """What the database keeps of a token: its SHA-256 (a copy of the database opens no reader's link)."""
    return hashlib.sha256(token.encode()).hexdigest()
