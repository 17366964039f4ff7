"""Equivalence verdicts across seeds: the rules on small fixed cases, seed counts, curves, the
environment comparison, the manifest's expect, and ``harness compare --against`` on a real store.

The interval arithmetic is checked against scipy's own Welch and Yuen (trimmed) t-tests, so the
expected numbers are computed independently, not copied from the implementation.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from harness.analysis.equivalence import (
    CONSISTENT,
    DIVERGED,
    INCONCLUSIVE,
    aggregate_of,
    choose_seed_count,
    classify,
    compare_curves,
    difference_interval,
    equivalence_test,
    resolve_margin,
    seeds_per_side,
    shared_grid,
    tost_power,
)
from harness.errors import HarnessError
from harness.reproduce.environment_diff import (
    bit_identity_ruled_out,
    compare_environments,
    lockfile_hashes,
)
from harness.reproduce.group_verdict import (
    EquivalenceSpec,
    group_scores,
    group_verdict,
    plan_seeds,
    published_group,
)
from harness.store.local import LocalStore
from tests.conftest import noop_variant
from tests.hubserver.runs import make_run

METRIC = "charts/episodic_return"
STEPS = range(0, 5000, 100)


# -- intervals and the three verdicts -------------------------------------------------------------


@pytest.mark.parametrize("aggregate,trim", [("mean", 0), ("iqm", 0.25)])
def test_interval_is_welch_or_yuen_as_scipy_computes_them(aggregate, trim):
    original = np.array([3.0, 5, 9, 4, 20, 6, 7, 8])
    reproduction = np.array([4.0, 6, 10, 30, 5, 7, 9, 1])

    interval = difference_interval(original, reproduction, aggregate, 0.90)

    reference = stats.ttest_ind(reproduction, original, equal_var=False, trim=trim)
    lo, hi = reference.confidence_interval(0.90)
    assert (float(interval.lo), float(interval.hi)) == pytest.approx((lo, hi), rel=1e-12)
    assert float(interval.df) == pytest.approx(reference.df, rel=1e-12)
    assert float(interval.estimate) == pytest.approx(
        stats.trim_mean(reproduction, trim) - stats.trim_mean(original, trim)
    )


def test_iqm_is_rliables():
    from rliable import metrics

    rng = np.random.default_rng(5)
    for n in range(2, 13):
        scores = rng.standard_t(3, n)
        assert float(aggregate_of(scores, "iqm")) == pytest.approx(metrics.aggregate_iqm(scores[:, None]))


def test_batched_intervals_equal_one_by_one():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 4))
    batch = difference_interval(a, b, "iqm")
    for i in range(7):
        single = difference_interval(a[i], b[i], "iqm")
        assert (float(single.lo), float(single.hi)) == pytest.approx((batch.lo[i], batch.hi[i]))


def test_consistent_diverged_and_inconclusive_on_fixed_groups():
    original = [100.0, 104.0, 96.0]
    close = equivalence_test(original, [101.0, 103.0, 98.0], margin=10)
    far = equivalence_test(original, [131.0, 127.0, 129.0], margin=10)
    noisy = equivalence_test(original, [80.0, 125.0, 101.0], margin=10)

    assert close.verdict == CONSISTENT and -10 < close.ci[0] < close.ci[1] < 10
    assert far.verdict == DIVERGED and far.ci[0] > 10
    assert noisy.verdict == INCONCLUSIVE and noisy.ci[0] < -10 < noisy.ci[1]
    # the seeds it asks for would give 80 % power, one fewer would not
    n = noisy.seeds_needed
    assert n is not None and not noisy.seeds_needed_capped
    assert tost_power(10, noisy.sd_pooled, n, n) >= 0.8 > tost_power(10, noisy.sd_pooled, n - 1, n - 1)
    assert str(n) in noisy.summary() and "inconclusive" in noisy.summary()


def test_a_divergence_below_the_margin_is_still_consistent_and_one_beyond_it_diverged():
    original = [50.0, 50.5, 49.5, 50.2, 49.8]
    shifted = [x + 3 for x in original]
    assert equivalence_test(original, shifted, margin=5).verdict == CONSISTENT
    assert equivalence_test(original, shifted, margin=1).verdict == DIVERGED


def test_relative_margin_and_its_errors():
    assert resolve_margin(-200.0, margin_relative=0.05) == (10.0, 0.05)
    assert resolve_margin(200.0) == (20.0, 0.1)  # the default: 10 % of the original
    assert resolve_margin(200.0, margin=3) == (3.0, None)
    with pytest.raises(HarnessError, match="state an absolute"):
        resolve_margin(0.0, margin_relative=0.1)
    with pytest.raises(HarnessError, match="not both"):
        resolve_margin(1.0, margin=1, margin_relative=0.1)
    with pytest.raises(HarnessError, match="positive"):
        resolve_margin(1.0, margin=0)
    with pytest.raises(HarnessError, match="between 0.5 and 1"):
        equivalence_test([1, 2], [1, 2], margin=1, confidence=0.4)


def test_classify_uses_strict_bounds():
    verdicts = classify([-1, 1, 2, -5, -5, -3, -2], [1, 5, 3, -2.5, -2, 3, 2], 2)
    assert list(verdicts) == [
        CONSISTENT,
        INCONCLUSIVE,
        INCONCLUSIVE,
        DIVERGED,
        INCONCLUSIVE,
        INCONCLUSIVE,
        INCONCLUSIVE,
    ]


def test_one_seed_a_side_is_inconclusive_without_a_seed_count():
    result = equivalence_test([10.0], [10.0], margin=1)
    assert result.verdict == INCONCLUSIVE and result.seeds_needed is None and "two seeds" in result.notes[0]


def test_groups_that_do_not_vary_compare_exactly():
    assert equivalence_test([5.0, 5.0, 5.0], [5.5, 5.5, 5.5], margin=1).verdict == CONSISTENT
    assert equivalence_test([5.0, 5.0, 5.0], [7.0, 7.0, 7.0], margin=1).verdict == DIVERGED


def test_two_seeds_a_side_are_never_decisive():
    # two low seeds against two high ones that happen to agree closely: the interval lies far
    # outside the margin, but a spread from two seeds cannot carry a verdict
    result = equivalence_test([200.3, 228.1], [360.8, 400.1], margin_relative=0.1)
    assert result.ci[0] > result.margin
    assert result.verdict == INCONCLUSIVE and result.seeds_needed is not None and "at least 3" in result.notes[0]


# -- seed counts --------------------------------------------------------------------------------------


def test_seeds_per_side_follows_the_tost_formula():
    # normal approximation: n = 2 (z_0.95 + z_0.90)^2 sd^2 / margin^2
    z = stats.norm.ppf(0.95) + stats.norm.ppf(0.90)
    for sd, margin in ((1.0, 0.5), (2.0, 0.5), (1.0, 0.25)):
        n, capped = seeds_per_side(sd, margin)
        approx = 2 * z**2 * sd**2 / margin**2
        assert not capped and approx <= n <= approx * 1.08 + 2
    counts = [seeds_per_side(1.0, m)[0] for m in (0.3, 0.5, 1.0, 2.0)]
    assert counts == sorted(counts, reverse=True)
    assert seeds_per_side(1.0, 0.001, cap=500) == (500, True)


def test_auto_seed_count_plans_with_an_upper_bound_and_says_when_the_cap_binds():
    published = [200.0, 210.0, 190.0, 205.0, 195.0, 202.0, 198.0, 207.0, 193.0, 200.0]
    wide = choose_seed_count(published, margin=20)
    assert not wide.capped and 3 <= wide.seeds < 20 and wide.power >= 0.8
    assert wide.sd_planning > np.std(published, ddof=1)
    assert f"{wide.seeds} seeds" in wide.message

    narrow = choose_seed_count(published[:3], margin=5)
    assert narrow.capped and narrow.seeds == 20
    assert "cap of 20 seeds binds" in narrow.message and "published seeds limit the precision" in narrow.message


def test_plan_seeds_same_more_new_and_auto():
    assert plan_seeds([1, 2, 3]).seeds == [1, 2, 3]
    assert plan_seeds([1, 2, 3], 5).seeds == [1, 2, 3, 4, 5]
    assert plan_seeds([1, 2, 3], 2).seeds == [1, 2]
    assert plan_seeds([1, 2, 3], None, new_seeds=True).seeds == [4, 5, 6]
    auto = plan_seeds(
        list(range(10)),
        "auto",
        published_scores=[200.0, 210, 190, 205, 195, 202, 198, 207, 193, 200],
        expect={"margin": 20},
    )
    assert len(auto.seeds) == choose_seed_count([200.0, 210, 190, 205, 195, 202, 198, 207, 193, 200], margin=20).seeds
    with pytest.raises(HarnessError, match="positive number"):
        plan_seeds([1], 0)


def test_published_group_is_the_same_configuration_over_seeds():
    base = {
        "name": "dqn",
        "manifest_sha256": "m",
        "lockfile_sha256": "l",
        "params": {"lr": 1},
        "smoke": False,
        "status": "completed",
        "reproduces": None,
    }
    runs = [dict(base, run_id=f"r{s}", seed=s) for s in (1, 2, 3)]
    others = [
        dict(base, run_id="lr2", seed=4, params={"lr": 2}),
        dict(base, run_id="again", seed=5, reproduces="r1"),
        dict(base, run_id="failed", seed=6, status="failed"),
        dict(base, run_id="smoke", seed=7, smoke=True),
        dict(base, run_id="recipe", seed=8, image={"content_hash": "edited workload"}),
    ]
    group = published_group(runs + others, runs[1])
    assert [r["run_id"] for r in group] == ["r2", "r1", "r3"]


# -- curves -------------------------------------------------------------------------------------


def level(step: float) -> float:
    return 200 * (1 - math.exp(-step / 1000))


OFFSETS = (-4.0, -1.0, 0.0, 2.0, 3.0)
OTHER_OFFSETS = (-3.0, -2.0, 1.0, 1.0, 3.5)


def returns(
    offset: float, shift_from: int | None = None, shift: float = 0.0, steps=STEPS
) -> list[tuple[str, int, float]]:
    return [
        (METRIC, s, level(s) + offset + (shift if shift_from is not None and s >= shift_from else 0.0)) for s in steps
    ]


def test_curves_name_the_first_checkpoint_outside_the_margin():
    original = [(np.array(STEPS, float), np.array([v for _, _, v in returns(o)])) for o in OFFSETS]
    late = [(np.array(STEPS, float), np.array([v for _, _, v in returns(o, 3000, 60.0)])) for o in OTHER_OFFSETS]

    curves = compare_curves(original, late, margin=20)

    assert list(curves.steps) == list(STEPS)  # all runs logged the same steps: compared there
    assert curves.first_diverged == 3000
    assert set(curves.verdicts[curves.steps < 3000]) == {CONSISTENT}
    assert curves.original_mean[10] == pytest.approx(level(1000) + np.mean(OFFSETS))


def test_curves_of_different_steps_are_interpolated_onto_the_common_range():
    a = [(np.array([0.0, 100, 200, 300]), np.array([0.0, 1, 2, 3]))] * 2
    b = [(np.array([50.0, 150, 250, 400]), np.array([0.5, 1.5, 2.5, 4.0]))] * 2
    grid = shared_grid([a, b], points=6)
    assert grid[0] == 50 and grid[-1] == 300 and len(grid) == 6
    with pytest.raises(HarnessError, match="no common step range"):
        shared_grid([[(np.array([0.0, 1]), np.array([0.0, 1]))], [(np.array([2.0, 3]), np.array([0.0, 1]))]])


# -- environments -------------------------------------------------------------------------------


def record(**changes):
    base = {
        "image": {"id": "sha256:" + "1" * 64, "content_hash": "c" * 64},
        "hardware": {"accelerator": "cpu", "gpus": 0},
        "host": {"cpu_model": "Xeon A", "gpus": [], "gpu_driver": None},
        "gpu": {"available": False, "reason": "no GPU assigned to the run", "driver": None, "devices": []},
        "environment": {
            "python": {"version": "3.11.2"},
            "packages": ["numpy==2.0.0", "torch==2.4.0"],
            "debian_packages": ["libc6=2.36-9", "zlib1g=1:1.2.13"],
            "torch": {"version": "2.4.0", "cuda": None, "cudnn": None, "gpus": []},
        },
    }
    for path, value in changes.items():
        target = base
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return base


LOCK = "numpy==2.0.0 \\\n    --hash=sha256:{h}\ntorch==2.4.0 \\\n    --hash=sha256:" + "e" * 64 + "\n"


def test_rebuilt_image_with_the_same_contents_is_environment_identical():
    original = record()
    rebuilt = record(image__id="sha256:" + "9" * 64)
    comparison = compare_environments(original, rebuilt, LOCK.format(h="a" * 64), LOCK.format(h="a" * 64))
    assert comparison.identical and comparison.lines() == ["environment identical"]


def test_each_difference_is_listed():
    original = record()
    other = record(
        environment__debian_packages=["libc6=2.36-10", "curl=7.88"],
        environment__packages=["numpy==2.1.0", "torch==2.4.0"],
        host__cpu_model="EPYC B",
    )
    comparison = compare_environments(original, other, LOCK.format(h="a" * 64), LOCK.format(h="b" * 64))
    found = {(d.category, d.name, d.original, d.reproduction) for d in comparison.differences}
    assert ("debian", "libc6", "2.36-9", "2.36-10") in found
    assert ("debian", "zlib1g", "1:1.2.13", None) in found and ("debian", "curl", None, "7.88") in found
    assert ("python", "numpy", "2.0.0", "2.1.0") in found
    assert ("python-hash", "numpy", ("sha256:" + "a" * 64,), ("sha256:" + "b" * 64,)) in found
    assert ("hardware", "CPU model", "Xeon A", "EPYC B") in found
    assert not comparison.identical and not comparison.software_identical and not comparison.hardware_identical
    assert any(line.startswith("debian libc6: 2.36-9 -> 2.36-10") for line in comparison.lines())


def test_facts_missing_from_one_record_are_unknown_not_different():
    older = record()
    del older["environment"]["debian_packages"]
    comparison = compare_environments(older, record())
    assert comparison.identical and comparison.unknown == ["Debian packages"]


def test_lockfile_hashes_read_continuation_lines():
    text = "# header\nnumpy==2.0.0 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
    assert lockfile_hashes(text) == {"numpy": ("sha256:" + "a" * 64, "sha256:" + "b" * 64)}


def test_gpu_run_reproduced_on_cpu_rules_out_bit_identity():
    gpu = record(
        hardware={"accelerator": "cuda", "gpus": 1},
        gpu={"available": True, "driver": "550.54", "devices": [{"name": "NVIDIA H100 80GB HBM3"}]},
        environment__torch={"version": "2.4.0", "cuda": "12.1", "cudnn": 90100, "gpus": ["NVIDIA H100 80GB HBM3"]},
    )
    cpu = record()
    assert bit_identity_ruled_out(gpu, cpu) == [
        "the original ran on GPU (NVIDIA H100 80GB HBM3), the reproduction on CPU"
    ]
    other_gpu = json.loads(json.dumps(gpu))
    other_gpu["gpu"]["devices"] = [{"name": "NVIDIA A100-SXM4-40GB"}]
    assert any("other GPUs" in r for r in bit_identity_ruled_out(gpu, other_gpu))
    assert bit_identity_ruled_out(cpu, record(host__cpu_model="EPYC B")) == []
    assert bit_identity_ruled_out(gpu, gpu) == []


# -- group verdicts on run folders -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "store"))
    return LocalStore(tmp_path / "store")


def make_group(store: LocalStore, name: str, seeds, offsets, shift: float = 0.0, shift_from: int | None = 0):
    return [
        store.run_dir(
            make_run(store, f"{name}-{seed}", seed=seed, name=name, metrics=returns(offset, shift_from, shift))[
                "run_id"
            ]
        )
        for seed, offset in zip(seeds, offsets)
    ]


@pytest.mark.parametrize("deterministic", [True, False])
def test_same_seeds_repeated_bit_for_bit_are_identical(store, deterministic):
    original = make_group(store, "toy-a", range(1, 6), OFFSETS)
    again = make_group(store, "toy-b", range(1, 6), OFFSETS)
    result = group_verdict(original, again, {"deterministic": deterministic})
    assert result.verdict == "identical" and result.exit_status == 0 and result.equivalence is None


def test_gpu_original_reproduced_on_cpu_goes_to_statistics(store):
    original = make_group(store, "toy-a", range(1, 6), OFFSETS)
    for folder in original:
        rec = store.load(folder.name)
        rec.update(
            hardware={"accelerator": "cuda", "gpus": 1},
            gpu={"available": True, "driver": "550.54", "devices": [{"name": "NVIDIA H100 80GB HBM3"}]},
        )
        store.save(rec)
    again = make_group(store, "toy-b", range(1, 6), OFFSETS)  # bit-equal streams, but on CPU
    result = group_verdict(original, again, {"deterministic": True, "margin_relative": 0.1})
    assert result.verdict == CONSISTENT and result.bit_identity_ruled_out
    assert any(line.startswith("bit-identity ruled out: the original ran on GPU") for line in result.lines())


def test_group_scores_follow_the_statistic(store):
    runs = make_group(store, "toy-a", (1, 2), (0.0, 10.0), shift=5.0, shift_from=4500)
    metric, last = group_scores(runs, {"statistic": "final"})
    _, mean10 = group_scores(runs, {"statistic": "last_n", "last_n": 10})
    assert metric == METRIC
    assert last == pytest.approx([level(4900) + 5.0, level(4900) + 15.0])
    expected = np.mean([level(s) + (5.0 if s >= 4500 else 0.0) for s in range(4000, 5000, 100)])
    assert mean10 == pytest.approx([expected, expected + 10.0])


def test_spec_overrides_keep_one_margin():
    spec = EquivalenceSpec.of({"deterministic": False, "margin": 5.0}, margin_relative=0.2)
    assert spec.margin is None and spec.margin_relative == 0.2 and spec.deterministic is False
    assert EquivalenceSpec.of(None, margin=3.0).margin == 3.0


# -- the CLI --------------------------------------------------------------------------------------


def verdict_json(cli, home, *args):
    result = cli("compare", *args, "--json", env={"HARNESS_HOME": str(home)})
    assert result.returncode in (0, 1, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_compare_against_gives_the_three_verdicts(store, cli, tmp_path):
    make_group(store, "toy-a", range(1, 6), OFFSETS)
    make_group(store, "toy-b", range(11, 16), OTHER_OFFSETS, shift=0.5)
    make_group(store, "toy-c", range(1, 6), OTHER_OFFSETS, shift=60.0)
    make_group(store, "toy-d", (21, 22), (-25.0, 25.0))
    make_group(store, "toy-e", range(1, 6), OTHER_OFFSETS, shift=60.0, shift_from=3000)
    home = store.root

    status, same = verdict_json(cli, home, "toy-a", "--against", "toy-b", "--margin-relative", "0.1")
    assert (status, same["verdict"], same["seeds"]) == (0, CONSISTENT, "new")
    eq = same["equivalence"]
    assert (
        eq["margin"] == pytest.approx(0.1 * eq["original"]) and -eq["margin"] < eq["ci"][0] < eq["ci"][1] < eq["margin"]
    )
    assert same["curves"]["first_diverged"] is None

    status, far = verdict_json(cli, home, "toy-a", "--against", "toy-c", "--margin", "20")
    assert (status, far["verdict"]) == (1, DIVERGED) and far["equivalence"]["ci"][0] > 20

    status, few = verdict_json(cli, home, "toy-a", "--against", "toy-d", "--margin", "20")
    assert (status, few["verdict"]) == (3, INCONCLUSIVE) and few["equivalence"]["seeds_needed"] > 2

    figure = tmp_path / "late.png"
    status, late = verdict_json(
        cli, home, "toy-a", "--against", "toy-e", "--margin", "20", "--statistic", "final", "--figure", str(figure)
    )
    assert late["verdict"] == DIVERGED and late["curves"]["first_diverged"] == 3000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000

    text = cli("compare", "toy-a", "--against", "toy-d", "--margin", "20", env={"HARNESS_HOME": str(home)})
    assert text.returncode == 3
    assert "verdict: inconclusive" in text.stdout and "seeds per side for 80 %" in text.stdout
    assert "environment: environment identical" in text.stdout


def test_compare_against_overlapping_selections_is_bad_input(store, cli):
    make_group(store, "toy-a", range(1, 4), OFFSETS[:3])
    result = cli("compare", "toy-a", "--against", "toy-a seed=1", env={"HARNESS_HOME": str(store.root)})
    assert result.returncode == 2 and "share run" in result.stderr


# -- the manifest's expect ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expect,fragment",
    [
        ("{deterministic: false, margin: 0}", "expect.margin: margin 0 must be a positive number"),
        (
            "{deterministic: false, margin_relative: 1.5}",
            "expect.margin_relative: margin_relative 1.5 must be a fraction",
        ),
        (
            "{deterministic: false, margin: 2, confidence: 1.0}",
            "expect.confidence: confidence 1.0 must be between 0.5 and 1",
        ),
        ("{deterministic: false, margin: 2, margin_relative: 0.1}", "not both"),
        ("{deterministic: false, aggregate: median}", "expect.aggregate"),
    ],
)
def test_validate_refuses_an_odd_margin_in_one_line(tmp_path, cli, expect, fragment):
    manifest = noop_variant(tmp_path, "expect: {deterministic: true}", f"expect: {expect}")
    result = cli("validate", manifest)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "variant.yaml:" in lines[0]


def test_validate_warns_when_a_non_deterministic_run_states_no_margin(tmp_path, cli):
    manifest = noop_variant(
        tmp_path,
        "expect: {deterministic: true}",
        "expect: {deterministic: false}",
    ).replace("seeds: [0]", "seeds: [0]")
    result = cli("validate", manifest)
    assert result.returncode == 0 and ": ok (noop" in result.stdout
    assert "warning: deterministic is false and no margin is stated" in result.stderr
    stated = noop_variant(
        tmp_path / "b",
        "expect: {deterministic: true}",
        "expect: {deterministic: false, margin_relative: 0.1, aggregate: iqm, statistic: final}",
    )
    quiet = cli("validate", stated)
    assert quiet.returncode == 0 and "no margin is stated" not in quiet.stderr


def test_an_older_manifests_alpha_still_loads_and_is_said_to_be_ignored(tmp_path, cli):
    manifest = noop_variant(tmp_path, "expect: {deterministic: true}", "expect: {deterministic: true, alpha: 0.05}")
    result = cli("validate", manifest)
    assert result.returncode == 0, result.stderr
    assert "expect: warning: alpha is ignored" in result.stderr


# -- real runs on the engine --------------------------------------------------------------------------


def test_real_runs_repeated_are_identical_and_their_environments_match(noop_image, store_home, cli):
    for again in ((), ("--rerun",)):
        for seed in ("0", "1"):
            result = cli("run", "manifests/noop.yaml", "--seed", seed, "--param", "seconds=1", *again)
            assert result.returncode == 0, result.stderr
    store = LocalStore(store_home)
    ids = sorted(path.name for path in store.runs_dir.iterdir())
    rerun_ids = [i for i in ids if re.search(r"-r[0-9a-f]{8}$", i)]  # a later attempt: <run_id>-r<8 hex>
    originals = [store.run_dir(i) for i in ids if i not in rerun_ids]
    reruns = [store.run_dir(i) for i in rerun_ids]
    assert len(originals) == len(reruns) == 2

    result = group_verdict(originals, reruns)

    assert result.verdict == "identical" and result.seeds == "same"
    assert result.environment.identical and not result.environment.unknown
    assert any(p.startswith("libc6=") for p in store.load(ids[0])["environment"]["debian_packages"])
