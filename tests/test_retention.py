"""Retention as a pure function: keep the newest N plus age tiers, never the newest, never foreign or legacy."""

from datetime import UTC, datetime, timedelta

import pytest

from etcd_backup.catalog import Backup, format_key
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Policy, plan, prune
from tests.factories import manifest
from tests.memory_storage import MemoryStorage

pytestmark = pytest.mark.backup

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def make(when, cluster="uk8s-f1wymalx", complete=True, legacy=False, manifest_stored=None):
    key = format_key(cluster, "3.5.1", when, "tar.gz" if legacy else "zstd", prefix="etcd")
    return Backup(
        key=key,
        cluster_id=cluster,
        time=when,
        size=10,
        compression="zstd",
        encrypted=False,
        complete=complete and not legacy,
        legacy=legacy,
        manifest=None,
        manifest_stored=complete and not legacy if manifest_stored is None else manifest_stored,
    )


def hourly_series(count, start=NOW):
    return [make(start - timedelta(hours=h)) for h in range(count)]


def kept(result):
    return sorted(b.time for b in result.keep)


def test_keep_last_keeps_the_newest_n_and_removes_the_rest():
    backups = hourly_series(10)
    result = plan(backups, Policy(keep_last=3), NOW)
    assert kept(result) == sorted(b.time for b in backups[:3])
    assert len(result.remove) == 7
    assert result.reasons[backups[0].key] == "newest"
    assert "not selected" in result.reasons[backups[-1].key]


def test_every_backup_has_exactly_one_reason_and_one_side():
    backups = hourly_series(30) + [make(NOW - timedelta(days=40), legacy=True)]
    result = plan(backups, Policy(keep_last=2, daily=2), NOW)
    assert set(result.reasons) == {b.key for b in backups}
    assert {b.key for b in result.keep}.isdisjoint({b.key for b in result.remove})
    assert len(result.keep) + len(result.remove) == len(backups)


def test_daily_tier_keeps_the_newest_backup_of_each_day():
    backups = [make(NOW - timedelta(hours=6 * i)) for i in range(20)]  # 4 a day for 5 days
    result = plan(backups, Policy(keep_last=1, daily=3), NOW)
    days = {b.time.date() for b in result.keep}
    assert len(result.keep) == 3 and len(days) == 3
    for b in result.keep:
        same_day = [x for x in backups if x.time.date() == b.time.date()]
        assert b.time == max(x.time for x in same_day)


def test_weekly_and_monthly_tiers_reach_back_in_time():
    backups = [make(NOW - timedelta(days=d)) for d in range(0, 120)]
    result = plan(backups, Policy(keep_last=1, weekly=4, monthly=3), NOW)
    months = {b.time.strftime("%Y-%m") for b in result.keep}
    assert len(months) == 3
    assert any("weekly" in result.reasons[b.key] for b in result.keep)
    assert min(b.time for b in result.keep) < NOW - timedelta(days=50)


def test_hourly_tier():
    backups = [make(NOW - timedelta(minutes=20 * i)) for i in range(12)]  # 3 per hour
    result = plan(backups, Policy(keep_last=1, hourly=2), NOW)
    assert len(result.keep) == 2
    assert "hourly" in result.reasons[result.keep[-1].key]


def test_newest_complete_backup_is_never_removed_even_with_keep_1():
    backups = hourly_series(5)
    result = plan(backups, Policy(keep_last=1), NOW)
    assert [b.key for b in result.keep] == [backups[0].key]


def test_incomplete_and_legacy_backups_are_never_removed_and_do_not_count():
    complete = hourly_series(4)
    incomplete = make(NOW + timedelta(minutes=-1) - timedelta(hours=1), complete=False)
    bad_manifest = make(NOW - timedelta(days=30), complete=False, manifest_stored=True)
    legacy = make(NOW - timedelta(days=400), legacy=True)
    result = plan([*complete, incomplete, bad_manifest, legacy], Policy(keep_last=2), NOW)
    assert incomplete in result.keep and legacy in result.keep and bad_manifest in result.keep
    assert "may still be writing" in result.reasons[incomplete.key]
    assert "manifest is invalid" in result.reasons[bad_manifest.key]
    assert "legacy" in result.reasons[legacy.key]
    assert [b.key for b in result.remove] == [b.key for b in complete[2:]]


def test_an_old_object_without_manifest_is_a_leftover_the_plan_removes_and_says_why():
    complete = hourly_series(2)
    young = make(NOW - timedelta(hours=6, minutes=50), complete=False)
    leftover = make(NOW - timedelta(hours=7, minutes=10), complete=False)
    theirs = make(NOW - timedelta(days=3), cluster="uk8s-other", complete=False)
    result = plan([*complete, young, leftover, theirs], Policy(keep_last=5), NOW, cluster_id="uk8s-f1wymalx")
    assert [b.key for b in result.remove] == [leftover.key]
    assert "leftover" in result.reasons[leftover.key] and "7.2 h ago" in result.reasons[leftover.key]
    assert young in result.keep and theirs in result.keep


def test_prune_removes_a_leftover_object_and_nothing_else():
    from etcd_backup.catalog import list_backups

    storage = MemoryStorage()
    keys = [_stored(storage, NOW - timedelta(days=d)) for d in range(3)]
    storage.delete([keys[2] + ".manifest.json"])  # a prune that stopped after the manifest
    result = plan(list_backups(storage, "uk8s-f1wymalx"), Policy(keep_last=5), NOW)
    assert prune(storage, result, dry_run=False) == [keys[2]]
    assert {o.key for o in storage.list()} == {*keys[:2], *(k + ".manifest.json" for k in keys[:2])}


def test_backups_dated_in_the_future_are_kept_uncounted_and_reported():
    future = make(NOW + timedelta(days=2))
    past = hourly_series(4)
    result = plan([future, *past], Policy(keep_last=2), NOW)
    assert {b.key for b in result.keep} == {future.key, past[0].key, past[1].key}
    assert "dated after now" in result.reasons[future.key]
    (warning,) = result.warnings
    assert future.key in warning and "3 complete backups are kept" in warning and "'keep 2'" in warning


def test_newest_is_kept_when_incomplete_backups_are_newer():
    newer_incomplete = make(NOW, complete=False)
    older = hourly_series(3, start=NOW - timedelta(days=1))
    result = plan([newer_incomplete, *older], Policy(keep_last=1), NOW)
    assert older[0] in result.keep and newer_incomplete in result.keep
    assert len(result.remove) == 2


def test_other_clusters_backups_are_untouched():
    mine = hourly_series(3)
    theirs = [make(NOW - timedelta(hours=h), cluster="uk8s-other") for h in range(5)]
    result = plan([*mine, *theirs], Policy(keep_last=1), NOW, cluster_id="uk8s-f1wymalx")
    assert all(b in result.keep for b in theirs)
    assert all("uk8s-other" in result.reasons[b.key] for b in theirs)
    assert {b.key for b in result.remove} == {b.key for b in mine[1:]}


def test_mixed_clusters_without_a_cluster_name_are_refused():
    with pytest.raises(ConfigError, match="several clusters"):
        plan([make(NOW), make(NOW, cluster="uk8s-other")], Policy(keep_last=1), NOW)


def test_backups_dated_in_the_future_are_kept():
    future = make(NOW + timedelta(days=1))
    result = plan([future, *hourly_series(3)], Policy(keep_last=1), NOW)
    assert future in result.keep and len(result.remove) == 2


def test_empty_list_plans_nothing():
    result = plan([], Policy(keep_last=3), NOW)
    assert result.keep == [] and result.remove == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", Policy(keep_last=7)),
        (7, Policy(keep_last=7)),
        ("keep 7", Policy(keep_last=7)),
        ("keep 7, daily 7, weekly 4", Policy(keep_last=7, daily=7, weekly=4)),
        ("Keep=3; hourly 24; monthly: 12", Policy(keep_last=3, hourly=24, monthly=12)),
        ("daily 7", Policy(keep_last=1, daily=7)),
    ],
)
def test_policy_parses_readable_text(text, expected):
    assert Policy.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "keep", "keep -1", "keep 0", "0", "yearly 3", "keep 3, keep 4", "keep seven", "keep 3 daily 4"]
)
def test_policy_rejects_bad_text_clearly(text):
    with pytest.raises(ConfigError):
        Policy.parse(text)


def test_policy_prints_back_as_it_parses():
    policy = Policy(keep_last=7, daily=7, weekly=4)
    assert str(policy) == "keep 7, daily 7, weekly 4"
    assert Policy.parse(str(policy)) == policy


def _stored(storage, when):
    key = format_key("uk8s-f1wymalx", "3.5.1", when, "zstd")
    storage.put(key, __import__("io").BytesIO(b"x" * 10))
    stored = manifest(key, created=when)
    storage.put(key + ".manifest.json", __import__("io").BytesIO(stored.to_json()))
    return key


def test_prune_deletes_manifest_and_object_and_dry_run_deletes_nothing():
    from etcd_backup.catalog import list_backups

    storage = MemoryStorage()
    keys = [_stored(storage, NOW - timedelta(hours=h)) for h in range(4)]
    storage.put("notes.txt", __import__("io").BytesIO(b"foreign"))
    result = plan(list_backups(storage, "uk8s-f1wymalx"), Policy(keep_last=2), NOW)
    assert sorted(prune(storage, result, dry_run=True)) == sorted(keys[2:])
    assert len(list(storage.list())) == 9
    assert sorted(prune(storage, result, dry_run=False)) == sorted(keys[2:])
    left = {o.key for o in storage.list()}
    assert left == {"notes.txt", *keys[:2], *(k + ".manifest.json" for k in keys[:2])}
