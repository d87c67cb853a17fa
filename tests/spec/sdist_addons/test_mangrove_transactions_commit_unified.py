"""The transactions spec file pymongo 4.20.0 silently never runs.

run_spec.py copies this module into the extracted sdist's test/ package (so
pymongo's conftest sets up its client context for it, as for its own modules).

test/test_transactions_unified.py generates the classes for
transactions/unified and then for transactions-convenient-api/unified into
one module namespace. Both directories hold a commit.json, both become the
class TestUnifiedCommit, and the convenient-api one overwrites the other: the
10 tests of transactions/unified/commit.json are never collected. Generate
that directory again under another class-name prefix and keep only the class
that was lost.
"""

from __future__ import annotations

from test.unified_format import generate_test_classes, get_test_path

_classes = generate_test_classes(
    get_test_path("transactions", "unified"), module=__name__, class_name_prefix="Mangrove"
)
# "Test" + "Mangrove" + "_unified_commit", camel-cased by pymongo's generator.
TestMangroveUnifiedCommit = _classes["TestMangroveUnifiedCommit"]
del _classes
