"""pytest plugin that run_spec.py loads (``-p mangrove_spec_plugin``) into
pymongo's own test run.

pymongo generates one unittest class per spec JSON file, and some test
modules hold several spec directories (test_transactions_unified.py holds
both ``transactions/unified`` and ``transactions-convenient-api/unified``).
The JUnit XML alone cannot tell them apart, so this plugin:

* records, as JUnit ``<property>`` elements on every test case, the pytest
  node id, the spec directory the test came from (its "origin", relative to
  the sdist's ``test/``) and the ``runOnRequirements`` of its file and of the
  test itself, so that a "runOnRequirements not satisfied" skip can say
  *which* requirement Mangrove did not meet;
* with ``--spec-origin DIR`` (repeatable) deselects tests from other spec
  directories, so one corpus of a shared module can be run on its own;
* with ``--server-selection-timeout SECONDS`` lowers pymongo's default
  server selection timeout (30 s) for clients that do not set one;
* registers the ``default``/``default_async`` markers pymongo's conftest adds
  (its pyproject.toml, which declares them, is not used: we run with
  ``-c /dev/null`` so its ``filterwarnings = error`` and junit settings do not
  apply).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--spec-origin",
        action="append",
        default=[],
        metavar="DIR",
        help="only run tests generated from this spec directory (relative to test/)",
    )
    parser.addoption(
        "--server-selection-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="default serverSelectionTimeoutMS, in seconds, for clients that set none",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "default: pymongo default test suite")
    config.addinivalue_line("markers", "default_async: pymongo default async test suite")
    timeout = config.getoption("server_selection_timeout")
    if timeout is not None:
        # The server is one local replica-set member: selection either succeeds
        # at once or can never succeed (e.g. a test wanting a secondary), and
        # each such test would otherwise wait the full 30 s. pymongo's own
        # tests set this module attribute the same way (client_options.py
        # reads it at client creation for that reason).
        import pymongo.common

        pymongo.common.SERVER_SELECTION_TIMEOUT = timeout


def _origin(item: pytest.Item, test_root: Path) -> str:
    """The spec directory a generated test class was built from, e.g. 'sessions'."""
    test_path = getattr(item.cls, "TEST_PATH", None)
    if not test_path:
        return ""
    try:
        return Path(test_path).resolve().relative_to(test_root).as_posix()
    except ValueError:
        return str(test_path)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _test_run_on(item: pytest.Item) -> object:
    """The test-level runOnRequirements of the spec test this method runs.

    pymongo names the method after the test's description (see
    UnifiedSpecTestMeta in test/unified_format.py); reverse that mapping.
    """
    spec = getattr(item.cls, "TEST_SPEC", None) or {}
    for test in spec.get("tests", []):
        name = "test_" + test["description"].strip(". ").replace(" ", "_").replace(".", "_")
        if name == item.name:
            return test.get("runOnRequirements")
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items):
    test_root = (config.rootpath / "test").resolve()
    wanted = set(config.getoption("spec_origin"))
    keep, drop = [], []
    for item in items:
        origin = _origin(item, test_root)
        if wanted and origin not in wanted:
            drop.append(item)
            continue
        item.user_properties.append(("spec_nodeid", item.nodeid))
        item.user_properties.append(("spec_origin", origin))
        spec = getattr(item.cls, "TEST_SPEC", None) or {}
        if spec.get("runOnRequirements"):
            item.user_properties.append(("spec_file_run_on", _compact(spec["runOnRequirements"])))
        test_run_on = _test_run_on(item)
        if test_run_on:
            item.user_properties.append(("spec_test_run_on", _compact(test_run_on)))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
