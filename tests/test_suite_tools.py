"""The suite's own machinery: the xdist groups, the shared artifacts, and the
profile plugin with tools/suite_profile.py."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import SECONDS, group_of, shared_artifact

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent


def test_groups_are_files_except_the_split_ones():
    assert group_of("tests/test_export.py::test_tflite_float16") == "test_export.py"
    assert group_of("tests/test_export.py::test_tflite_int8_logits_and_pre_logits[int8]") == "test_export.py"
    # a notebook and a backend run each make a group; a training run's cases share one
    assert (group_of("tests/test_tutorials.py::test_tutorial_runs[03_deployment]")
            == "test_tutorials.py::test_tutorial_runs::03_deployment")
    assert (group_of("tests/test_backends.py::test_parity_on_backend[jax-jax]")
            == "test_backends.py::test_parity_on_backend::jax-jax")
    assert group_of("tests/test_training.py::test_mixed_precision[float16]") == "test_training.py::test_mixed_precision"
    assert group_of("tests/test_training.py::test_mixed_precision[bfloat16]") == "test_training.py::test_mixed_precision"
    assert group_of("tests/test_tutorials.py::test_every_notebook_is_listed") == (
        "test_tutorials.py::test_every_notebook_is_listed"
    )


@pytest.mark.slow
def test_every_timed_group_exists(request):
    """A renamed test or file would silently lose its place in the order.
    The run's own collection answers when it holds every timed group (a
    whole-suite run: each xdist worker collects all tests); a run of part of
    the suite collects the whole in a subprocess."""
    groups = {group_of(item.nodeid) for item in request.session.items}
    if not set(SECONDS) <= groups:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        groups = {group_of(line) for line in result.stdout.splitlines() if "::" in line}
    assert set(SECONDS) <= groups, sorted(set(SECONDS) - groups)


class _Config:
    """Stands in for pytest's config: a worker's has ``workerinput``."""


def test_shared_artifact_is_made_once(tmp_path_factory):
    calls = []

    def make(directory):
        calls.append(directory)
        (directory / "weights").write_text("trained")

    config = _Config()
    first = shared_artifact(config, tmp_path_factory, "unit", make)
    again = shared_artifact(config, tmp_path_factory, "unit", make)
    assert first == again and len(calls) == 1
    assert (first / "weights").read_text() == "trained"
    # a worker's artifacts lie one level up, in the run's root shared by
    # workers (outside xdist that is pytest's root for every run: a name of
    # this run's own, removed after)
    config.workerinput = {"workerid": "gw0"}
    name = f"unit-{uuid.uuid4().hex}"
    shared = shared_artifact(config, tmp_path_factory, name, make)
    try:
        assert shared.parent == tmp_path_factory.getbasetemp().parent and len(calls) == 2
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        pathlib.Path(str(shared) + ".lock").unlink(missing_ok=True)


SAMPLE = '''
import pytest

def test_passes():
    assert True

def test_fails():
    assert False

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
'''


def test_profile_plugin_records_each_test_and_the_tool_reads_it(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    profile = tmp_path / "profile.jsonl"
    env = dict(os.environ, PYTHONPATH=str(HERE), PYTEST_XDIST_WORKER="gw7")  # inherited, not ours
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "suite_profile_plugin", "-p", "no:cacheprovider",
         "--suite-profile", str(profile), str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    records = [json.loads(line) for line in profile.read_text().splitlines()]
    outcomes = {r["test"].split("::")[1]: r["outcome"] for r in records}
    assert outcomes == {"test_passes": "passed", "test_fails": "failed", "test_skipped": "skipped"}
    for record in records:
        assert record["worker"] == "main"  # not the environment's gw7
        assert record["seconds"] >= 0 and record["rss_after_mib"] > 0
        assert record["peak_mib"] >= record["rss_after_mib"]
    shown = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "suite_profile.py"), "show", str(profile)],
        capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "3 tests" in shown.stdout and "1 failed, 1 skipped" in shown.stdout
    assert "failed: " in shown.stdout and "test_fails" in shown.stdout
    # a pytest started by a test of a run that records to the same file adds nothing
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "suite_profile_plugin", "-p", "no:cacheprovider",
         "--suite-profile", str(profile), str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=dict(env, SUITE_PROFILE_FILE=str(profile)),
    )
    assert len(profile.read_text().splitlines()) == len(records)
