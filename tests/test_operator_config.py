"""The schedule file cannot silently lose protection: typos, clashing names and missing blocks are all refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from deployments.config import BackupSchedule, load_schedules
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Policy, Tiers

pytestmark = pytest.mark.operator

TYPOS = """
[[backup]]
cluster = "prod"
storage = "ufile-storage/prod"
kep = 30
timezon = "Asia/Shanghai"
cron = "*/61 * * * *"
encrypt_to = ["age1notakey"]
"""


def test_every_problem_is_listed_at_once_with_the_closest_key(tmp_path):
    path = tmp_path / "backups.toml"
    path.write_text(TYPOS)
    with pytest.raises(ConfigError) as caught:
        load_schedules(path)
    text = caught.value.message
    assert "4 problem(s), nothing deployed" in text
    assert "unknown key 'kep' (did you mean 'keep'?)" in text
    assert "unknown key 'timezon' (did you mean 'timezone'?)" in text
    assert "step /61 of the minute field must be between 1 and 60" in text
    assert "'age1notakey' is not an age public key" in text


def test_a_real_age_recipient_and_ssh_key_are_accepted():
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    schedule = BackupSchedule(cluster="prod", storage="s3-storage/prod", encrypt_to=[recipient])
    assert schedule.encrypt_to == [recipient]


def test_two_entries_for_one_cluster_must_name_themselves(tmp_path):
    path = tmp_path / "backups.toml"
    two = '[[backup]]\ncluster = "prod"\nstorage = "ufile-storage/prod"\n\n'
    two += '[[backup]]\ncluster = "prod"\nstorage = "s3-storage/prod"\ncron = "0 12 * * *"\n'
    path.write_text(two)
    with pytest.raises(ConfigError) as caught:
        load_schedules(path)
    assert 'give each entry of prod its own name, e.g. name = "prod-s3"' in caught.value.message
    named = two.replace('storage = "ufile', 'name = "prod-ufile"\nstorage = "ufile')
    named = named.replace('storage = "s3', 'name = "prod-s3"\nstorage = "s3')
    path.write_text(named)
    assert [s.deployment for s in load_schedules(path)] == ["prod-ufile", "prod-s3"]
    path.write_text(named.replace("prod-s3", "prod-ufile"))
    with pytest.raises(ConfigError, match="name 'prod-ufile' is already used by \\[\\[backup\\]\\] #1"):
        load_schedules(path)


@pytest.mark.parametrize(
    "keep, policy",
    [
        (3, "keep 3"),
        ("keep 7, daily 7", "keep 7, daily 7"),
        ({"last": 2, "daily": 7, "weekly": 4}, "keep 2, daily 7, weekly 4"),
    ],
)
def test_retention_as_count_policy_or_tiers(tmp_path, keep, policy):
    path = tmp_path / "backups.toml"
    value = repr(keep) if not isinstance(keep, dict) else "{ " + ", ".join(f"{k} = {v}" for k, v in keep.items()) + " }"
    path.write_text(
        f'[[backup]]\ncluster = "prod"\nstorage = "ufile-storage/prod"\nkeep = {value.replace(chr(39), chr(34))}\n'
    )
    [schedule] = load_schedules(path)
    assert str(Policy.parse(schedule.keep)) == policy
    assert BackupSchedule(cluster="p", storage="a/b", keep=schedule.parameters()["keep"]).keep == schedule.keep


def test_a_misspelt_tier_is_refused_with_the_closest_one():
    with pytest.raises(ValueError, match="unknown retention tier 'dayly' \\(did you mean 'daily'\\?\\)"):
        BackupSchedule(cluster="prod", storage="a/b", keep={"last": 3, "dayly": 7})


def test_the_flows_show_the_tiers_as_form_fields():
    from prefect.utilities.callables import parameter_schema

    from flows.backup import backup_etcd, prune_backups

    for flow in (backup_etcd, prune_backups):
        schema = parameter_schema(flow).model_dump()
        assert {"$ref": "#/definitions/Tiers"} in schema["properties"]["keep"]["anyOf"]
        assert set(schema["definitions"]["Tiers"]["properties"]) == set(Tiers.model_fields)
        assert flow.validate_parameters({"cluster": "c", "storage": "a/b", "keep": {"last": 2}})["keep"] == Tiers(
            last=2
        )
        assert flow.validate_parameters({"cluster": "c", "storage": "a/b", "keep": 3})["keep"] == 3


def _check(config, server) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments", "check", "--config", str(config)],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_loads_every_block_and_checks_its_type(local_prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import EtcdCluster, LocalStorage

    with temporary_settings({PREFECT_API_URL: local_prefect_server.api_url}):
        EtcdCluster(cluster_id="uk8s-check", ca_pem="ca", cert_pem="cert", key_pem="key").save("check", overwrite=True)
        LocalStorage(directory=str(tmp_path / "backups")).save("check", overwrite=True)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[backup]]\ncluster = "nope"\nstorage = "local-directory-storage/missing"\n'
        'notify = "etcd-cluster/check"\nidentity = "no-identity"\n\n'
        '[[backup]]\nname = "check-2"\ncluster = "check"\nstorage = "etcd-cluster/check"\nkepp = 3\n'
    )
    run = _check(bad, local_prefect_server)
    assert run.returncode == 2, run.stdout + run.stderr
    err = run.stderr
    assert "6 problem(s), nothing deployed" in err, err
    assert "cluster block 'nope' does not exist" in err
    assert "storage block 'local-directory-storage/missing' does not exist" in err
    assert "notify block 'etcd-cluster/check' is a etcd-cluster block, not a notification block" in err
    assert "identity block 'no-identity' does not exist" in err
    assert "storage block 'etcd-cluster/check' is a etcd-cluster block, not a storage block" in err
    assert "unknown key 'kepp' (did you mean 'keep'?)" in err
    assert "Traceback" not in err
    good = tmp_path / "good.toml"
    good.write_text('[[backup]]\ncluster = "check"\nstorage = "local-directory-storage/check"\n')
    run = _check(good, local_prefect_server)
    assert run.returncode == 0, run.stderr
    assert "every block found; nothing deployed" in run.stdout


def test_the_example_file_is_valid():
    [schedule] = load_schedules(Path("backups.example.toml"))
    assert (schedule.deployment, schedule.cluster, schedule.keep) == ("prod-ufile", "prod", 7)
