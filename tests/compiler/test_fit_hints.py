"""The scheduler's hints (how far a job that does not fit must move) against brute force:
Ports.fit and first_busy_every, on random port use. A hint that is too large skips a start
cycle that fits (a worse program); one that is too small only costs compile time."""

import random

from compiler.backend.resources import Ports, fit


def _ports(rng: random.Random, horizon: int) -> tuple[Ports, set[int]]:
    p, taken = Ports(), set()
    for _ in range(rng.randint(0, 12)):
        c0 = rng.randrange(horizon)
        c1 = c0 + rng.randint(1, 6)
        if taken & set(range(c0, c1)):
            continue
        p.add(c0, c1, rng.randrange(2))
        taken |= set(range(c0, c1))
    return p, taken


def _cycles(runs) -> list[int]:
    if type(runs) is range:
        return list(runs)
    return [c for c0, c1 in runs for c in range(c0, c1)]


def _job(rng: random.Random, horizon: int):
    if rng.random() < 0.4:  # a stepped range (an MXM streaming rows at a slow rate)
        c0 = rng.randrange(horizon)
        return range(c0, c0 + rng.randint(1, 8) * 3, rng.choice([2, 3, 4]))
    runs, c = [], rng.randrange(horizon)
    for _ in range(rng.randint(1, 3)):
        n = rng.randint(1, 5)
        runs.append((c, c + n))
        c += n + rng.randint(1, 4)
    return runs


def test_fit_is_the_least_shift_that_frees_every_port():
    for seed in range(300):
        _check_fit(seed)


def _check_fit(seed: int) -> None:
    rng = random.Random(seed)
    items, taken = [], []
    for _ in range(rng.randint(1, 3)):
        p, t = _ports(rng, 60)
        items.append((p, _job(rng, 60)))
        taken.append(t)
    start = rng.randint(0, 5)
    s = start
    while any(c + s in t for (_p, runs), t in zip(items, taken, strict=True)
              for c in _cycles(runs)):
        s += 1
    assert fit(items, start, moves=10_000) == s, seed
    # with few moves it may stop early, but never past the answer
    assert start <= fit(items, start, moves=1) <= s, seed


def test_first_busy_every():
    for seed in range(300):
        rng = random.Random(seed)
        p, taken = _ports(rng, 50)
        c0 = rng.randrange(50)
        r = range(c0, c0 + rng.randint(0, 30), rng.randint(2, 5))
        want = next((c for c in r if c in taken), None)
        assert p.first_busy_every(r.start, r.stop, r.step) == want, seed


def test_first_conflict_by_bank():
    """A read of bank b collides with a write of bank b or of any bank (a gather's reads:
    ALL_BANKS), and a gather with every write: the first such use and the end of its run."""
    from compiler.backend.resources import ALL_BANKS

    for seed in range(300):
        rng = random.Random(seed)
        p, runs = Ports(), []
        c = rng.randrange(5)
        for _ in range(rng.randint(0, 12)):
            c0, c1 = c, c + rng.randint(1, 5)
            bank = rng.choice([0, 1, ALL_BANKS])
            p.add(c0, c1, bank)
            runs.append((c0, c1, bank))
            c = c1 + rng.choice([0, 0, 1, 3])
        # runs of one bank that touch are one use
        merged = []
        for c0, c1, bank in runs:
            if merged and merged[-1][1] == c0 and merged[-1][2] == bank:
                merged[-1] = (merged[-1][0], c1, bank)
            else:
                merged.append((c0, c1, bank))
        c0 = rng.randrange(40)
        c1 = c0 + rng.randint(1, 20)
        bank = rng.choice([0, 1, ALL_BANKS])
        want = next(((max(a, c0), e) for a, e, b in merged
                     if a < c1 and c0 < e and ALL_BANKS in (b, bank) or
                     a < c1 and c0 < e and b == bank), None)
        assert p.first_conflict(c0, c1, bank) == want, seed
