"""Shared pytest set-up: fixture libraries, and a guard that turns skips into failures in CI."""

import os
import tempfile

# Retries stay on in tests, with short delays (seconds of backoff base).
os.environ.setdefault("ETCD_BACKUP_RETRY_DELAY", "0.2")
# Restore journals and reports of the test runs go to a temporary dir, not ~/.etcd-backup/reports.
os.environ.setdefault("ETCD_BACKUP_REPORT_DIR", tempfile.mkdtemp(prefix="etcd-restore-reports-"))

pytest_plugins = [
    "tests.fleet.fixtures",
    "tests.servers.fixtures",
    "tests.prefect_fixtures",
    "tests.servers.scale_fixtures",
]


def pytest_addoption(parser):
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        default=os.environ.get("CI") == "true",
        help="fail the run when any test was skipped (default in CI)",
    )


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not session.config.getoption("--fail-on-skip") or reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and session.exitstatus == 0:
        session.exitstatus = 1
        reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped and --fail-on-skip is set", red=True)


def pytest_collection_modifyitems(config, items):
    """Make `--dist loadgroup` keep an xdist_group on one worker under pytest 9 (xdist 3.8 sets `_nodeid`, unused)."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")
