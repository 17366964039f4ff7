"""The LM image end to end in the sandbox: the constraints experiment twice, bit-identical, with
its figure in the record (the other experiments are checked on the host in test_lm_workloads)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from harness.store.local import LocalStore
from tests.conftest import REPO, copy_project

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="session")
def lm_image(base_image):
    from harness.images.build import build_image

    return build_image(REPO / "images" / "lm", REPO / "lockfiles" / "lm.txt")


def test_lm_constraints_in_the_sandbox_is_bit_identical(lm_image, store_home, cli):
    manifest = str(REPO / "manifests" / "lm-constraints.yaml")
    for _ in range(2):
        result = cli("run", manifest, "--smoke", "--rerun", "--quiet")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    store = LocalStore(store_home)
    first, second = sorted(store.records(), key=lambda r: r["run_id"])
    tables = [
        sorted(
            (r["name"], r["step"], r["value"])
            for r in pq.read_table(store.run_dir(rec["run_id"]) / "metrics.parquet").to_pylist()
        )
        for rec in (first, second)
    ]
    assert tables[0] == tables[1] and tables[0]
    values = {name: value for name, _, value in tables[0]}
    assert values["constraints/attention_nopos_equivariance_error_max"] < 1e-5
    assert any(path.endswith(".png") for path in first["files"])
    assert "transformers" in " ".join(first["environment"]["packages"])


def test_lm_throughput_data_parallel_in_the_sandbox(lm_image, store_home, cli, tmp_path):
    """Two gloo processes over loopback inside a container with no network (a short timeout, so a
    hang in the rendezvous fails the test instead of holding CI)."""
    copy_project(tmp_path, "images/lm", "lockfiles/lm.txt", "manifests/lm-throughput.yaml")
    manifest = tmp_path / "manifests" / "lm-throughput.yaml"
    manifest.write_text(manifest.read_text().replace("timeout: 20m", "timeout: 4m"))
    result = cli("run", str(manifest), "--smoke", "--quiet")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = next(LocalStore(store_home).records())
    assert record["status"] == "completed"
    summary = record["metrics_summary"]
    assert summary["throughput/world_size"]["last"] == 2
    assert summary["throughput/ddp_tokens_per_s"]["last"] > 0 and summary["throughput/loss_abs_diff"]["last"] < 1e-5
