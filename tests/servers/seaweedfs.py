"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` on free loopback ports."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import botocore.config

from tests.servers.process import Served, stop_group

WEED = (
    Path(sys.executable).with_name("weed")
    if Path(sys.executable).with_name("weed").exists()
    else Path(shutil.which("weed") or "weed")
)
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SeaweedFS(Served):
    """One `weed mini` process with only S3 (plus its internal services) on free ports."""

    def __init__(self, directory: str | None = None, access_key: str = "etcdbackup", secret_key: str | None = None):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="seaweedfs-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def start(self, timeout: float = 60) -> SeaweedFS:
        """Start weed and wait until its S3 API answers (signed requests included)."""
        args = [
            str(WEED),
            "mini",
            f"-dir={self.directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # as UFile and S3: writing to a missing bucket is an error
        ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        began = time.monotonic()
        self.log = open(self.directory / "weed.log", "wb")
        self.process = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True
        )
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {self.log.name}")
            if time.monotonic() - began > timeout:
                self.stop()
                raise RuntimeError(
                    f"weed mini did not answer on {self.endpoint} within {timeout}s; see {self.log.name}"
                )
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - began
        return self

    def client(self, **overrides):
        """A boto3 S3 client for this server (admin credentials)."""
        config = botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        args = dict(
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            config=config,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        return boto3.session.Session().client("s3", **{**args, **overrides})

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop weed (its whole process group) and wait for it."""
        stop_group(self.process)
        if getattr(self, "log", None):
            self.log.close()

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)
        except urllib.error.HTTPError:
            pass  # 403 to an anonymous request: the S3 API is up
        except OSError:
            return False
        try:
            self.client().list_buckets()
        except Exception:  # noqa: BLE001 - any failure means not ready yet
            return False
        return True
