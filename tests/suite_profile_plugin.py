"""A pytest plugin that records what each test costs: wall time and memory.

Enabled with ``--suite-profile FILE`` (see ``tools/suite_profile.py``, which
runs the suite with it and prints the top consumers). For every test it
appends one JSON line to FILE: the test's id and file, the worker (under
pytest-xdist), the wall time of setup + call + teardown, the process's
resident memory before and after, its peak so far (``VmHWM``), and the peak
of the subprocesses it waited for (notebook kernels, backend scripts).
Each worker appends to the same file; lines are short enough to be written
whole. A pytest that one of the run's tests starts with the same FILE (the
backend parity runs inherit ``PYTEST_ADDOPTS``) records nothing: its time is
that test's.
"""

import json
import os
import resource
import time

import pytest


def _status_kib(field):
    """A ``/proc/self/status`` field in KiB (Linux), or None elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _mib(kib):
    return None if kib is None else round(kib / 1024, 1)


class SuiteProfile:
    def __init__(self, path, worker):
        self.path = path
        self.worker = worker
        self._outcome = {}

    def pytest_runtest_logreport(self, report):
        # the worst of setup, call and teardown
        if report.outcome != "passed" or report.when == "call":
            if self._outcome.get(report.nodeid) in (None, "passed"):
                self._outcome[report.nodeid] = report.outcome

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        rss_before = _status_kib("VmRSS")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        record = {
            "test": item.nodeid,
            "file": item.nodeid.split("::")[0],
            "worker": self.worker,
            "seconds": round(seconds, 3),
            "outcome": self._outcome.pop(item.nodeid, "unknown"),
            "rss_before_mib": _mib(rss_before),
            "rss_after_mib": _mib(_status_kib("VmRSS")),
            "peak_mib": _mib(_status_kib("VmHWM")),
            # ru_maxrss is KiB on Linux: the largest child waited for so far
            "children_peak_mib": _mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def pytest_addoption(parser):
    parser.addoption(
        "--suite-profile",
        metavar="FILE",
        default=None,
        help="append each test's wall time and memory (JSON lines) to FILE; "
        "tools/suite_profile.py summarises it",
    )


# The file the run being profiled records to, for the processes it starts.
RECORDING = "SUITE_PROFILE_FILE"


def pytest_configure(config):
    path = config.getoption("--suite-profile")
    if not path:
        return
    path = os.path.abspath(path)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        if os.environ.get(RECORDING) == path:
            # a pytest that a test of the profiled run started (PYTEST_ADDOPTS
            # passes the option on: the backend parity runs): its tests'
            # time is that test's, already recorded once
            return
        os.environ[RECORDING] = path  # the xdist workers and subprocesses inherit it
    # xdist's worker id from the config, not the environment, which a pytest
    # run in a subprocess of a worker inherits
    worker = (workerinput or {}).get("workerid", "main")
    config.pluginmanager.register(SuiteProfile(path, worker), "suite-profile")
