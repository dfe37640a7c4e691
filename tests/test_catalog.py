"""Backup names (the runbook's), manifests and listing a cluster's backups from a real directory."""

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from etcd_backup.catalog import Manifest, format_key, list_backups, parse_key
from etcd_backup.errors import ConfigError
from etcd_backup.storage.local import LocalStorage
from tests.factories import manifest

pytestmark = pytest.mark.backup

RUNBOOK_NAME = "uk8s-f1wymalx-backup-etcd-3.3.17-2020-02-11T03-56-12.db.tar.gz"
WHEN = datetime(2020, 2, 11, 3, 56, 12, tzinfo=UTC)


def test_the_runbooks_own_backup_name_parses():
    parsed = parse_key(RUNBOOK_NAME)
    assert parsed.cluster_id == "uk8s-f1wymalx"
    assert parsed.etcd_version == "3.3.17"
    assert parsed.time == WHEN
    assert parsed.compression == "tar.gz" and not parsed.encrypted
    assert parsed.prefix == ""


def test_format_key_makes_the_runbooks_name():
    assert format_key("uk8s-f1wymalx", "3.3.17", WHEN, "tar.gz") == RUNBOOK_NAME


@pytest.mark.parametrize(
    "compression, ext", [("tar.gz", ".db.tar.gz"), ("zstd", ".db.zst"), ("gzip", ".db.gz"), ("none", ".db")]
)
@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("prefix", ["", "etcd/prod", "/etcd/"])
def test_names_round_trip(compression, ext, encrypted, prefix):
    key = format_key("uk8s-a-b-c", "3.5.1", WHEN, compression, encrypted, prefix)
    assert key.endswith(ext + (".age" if encrypted else ""))
    parsed = parse_key(key)
    assert (parsed.cluster_id, parsed.etcd_version, parsed.time) == ("uk8s-a-b-c", "3.5.1", WHEN)
    assert (parsed.compression, parsed.encrypted, parsed.prefix) == (compression, encrypted, prefix.strip("/"))


def test_local_times_are_named_in_utc():
    beijing = timezone(timedelta(hours=8))
    key = format_key("c1", "3.4.23", datetime(2020, 2, 11, 11, 56, 12, tzinfo=beijing))
    assert parse_key(key).time == WHEN


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "uk8s-x-backup-etcd-3.5.1.db",
        "x-backup-etcd-3.5.1-2020-13-01T00-00-00.db",
        "c-backup-etcd-3.5.1-2020-02-11T03-56-12.db.tar.gz.tmp",
        "c-backup-etcd-3.5.1-2020-02-11T03-56-12.db.tar.gz.manifest.json",
    ],
)
def test_foreign_names_do_not_parse(name):
    assert parse_key(name) is None


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError):
        format_key("c", "3.5.1", WHEN, "lz4")
    with pytest.raises(ConfigError):
        format_key("a/b", "3.5.1", WHEN)


def _manifest(key, size, cluster="uk8s-f1wymalx"):
    return manifest(key, cluster=cluster, size=size, raw_size=size, revision=5, key_count=3, created=WHEN)


def test_list_backups_reports_complete_incomplete_legacy_and_skips_foreign(tmp_path):
    storage = LocalStorage(tmp_path)
    complete = format_key("uk8s-f1wymalx", "3.5.1", WHEN + timedelta(days=2), "zstd", prefix="etcd")
    incomplete = format_key("uk8s-f1wymalx", "3.5.1", WHEN + timedelta(days=1), "zstd", prefix="etcd")
    legacy = "etcd/" + RUNBOOK_NAME
    other_cluster = format_key("uk8s-other", "3.5.1", WHEN, "zstd", prefix="etcd")
    other_prefix = format_key("uk8s-f1wymalx", "3.5.1", WHEN, "zstd", prefix="etcd/old")
    for key in (complete, incomplete, legacy, other_cluster, other_prefix, "etcd/readme.txt"):
        storage.put(key, io.BytesIO(b"data"))
    storage.put(complete + ".manifest.json", io.BytesIO(_manifest(complete, 4).to_json()))
    storage.put(other_cluster + ".manifest.json", io.BytesIO(_manifest(other_cluster, 4, "uk8s-other").to_json()))

    backups = list_backups(storage, "uk8s-f1wymalx", prefix="etcd")

    assert [b.key for b in backups] == [legacy, incomplete, complete]  # oldest first
    by_key = {b.key: b for b in backups}
    assert by_key[complete].complete and by_key[complete].manifest.revision == 5
    assert not by_key[incomplete].complete and not by_key[incomplete].legacy
    assert by_key[legacy].legacy and not by_key[legacy].complete and by_key[legacy].time == WHEN


def test_a_manifest_that_does_not_match_its_object_makes_the_backup_incomplete(tmp_path):
    storage = LocalStorage(tmp_path)
    key = format_key("c1", "3.5.1", WHEN, "zstd")
    storage.put(key, io.BytesIO(b"data"))
    storage.put(key + ".manifest.json", io.BytesIO(_manifest(key, 999, "c1").to_json()))
    other = format_key("c1", "3.5.1", WHEN + timedelta(hours=1), "zstd")
    storage.put(other, io.BytesIO(b"data"))
    storage.put(other + ".manifest.json", io.BytesIO(b"{not json"))
    assert [b.complete for b in list_backups(storage, "c1")] == [False, False]


def test_manifest_json_round_trips():
    manifest = _manifest("k", 4)
    assert Manifest.model_validate_json(manifest.to_json()) == manifest
    assert manifest.format == 1
