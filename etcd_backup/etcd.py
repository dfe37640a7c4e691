"""Talking to etcd over gRPC (pyetcd's generated stubs): members, status, health, source choice, snapshot."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.protobuf.unknown_fields import UnknownFieldSet
from pyetcd import etcdrpc

from etcd_backup.errors import ConfigError, EtcdTLSRefused, EtcdUnavailable
from etcd_backup.snapshot import TRAILER

T = TypeVar("T")
HEALTH_ROUNDS = 3  # checks of an unhealthy endpoint before it counts as unhealthy
HEALTH_PAUSE = 2.0  # seconds between them
MIN_SNAPSHOT_RATE = 2 << 20  # bytes/s the snapshot deadline allows for, at the least
# A fixed 4 MiB HTTP/2 window: with BDP probing gRPC grows it and buffers tens of MB of snapshot.
MEMBER_IS_LEARNER, STATUS_IS_LEARNER = 5, 10  # proto field numbers newer than pyetcd's generated code
# What gRPC's TLS handshake errors say (BoringSSL), and what that means for the user.
SERVER_NOT_TRUSTED = (
    "certificate signature failure",
    "certificate_verify_failed",
    "certificate verify failed",
    "unable to get local issuer",
    "self signed certificate",
    "self-signed certificate",
)
SERVER_EXPIRED = ("certificate has expired", "certificate is not yet valid")
CLIENT_REFUSED = (
    "alert_bad_certificate",
    "alert_certificate_expired",
    "alert_unknown_ca",
    "alert_certificate_required",
    "alert_handshake_failure",
    "alert_certificate_unknown",
)
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.enable_http_proxy", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 << 20),
]


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach one etcd cluster: client endpoints, TLS material as PEM text, timeout in seconds."""

    endpoints: tuple[str, ...]
    ca: str | None = field(default=None, repr=False)
    cert: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    def __post_init__(self):
        endpoints = (self.endpoints,) if isinstance(self.endpoints, str) else tuple(self.endpoints)
        if not endpoints:
            raise ConfigError("no etcd endpoints given")
        object.__setattr__(self, "endpoints", tuple(_normalise(e, tls=self.ca is not None) for e in endpoints))
        if bool(self.cert) != bool(self.key):
            raise ConfigError("etcd client certificate and key must be given together")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC TLS credentials built from the PEM texts."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.encode() if self.ca else None,
            private_key=self.key.encode() if self.key else None,
            certificate_chain=self.cert.encode() if self.cert else None,
        )


def _normalise(endpoint: str, tls: bool) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = ("https://" if tls else "http://") + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"etcd endpoint {endpoint!r} must be http(s)://host:port")
    return endpoint


@dataclass(frozen=True)
class MemberInfo:
    """One etcd member as `member list` shows it."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def hex_id(self) -> str:
        """The id as etcdctl prints it."""
        return f"{self.id:x}"


@dataclass(frozen=True)
class EndpointStatus:
    """What one endpoint reports about itself (`endpoint status`)."""

    endpoint: str
    version: str
    db_size: int
    leader_id: int
    member_id: int
    raft_index: int
    raft_term: int
    revision: int
    is_learner: bool
    cluster_id: int = 0  # etcd's own cluster id (a whole-cluster restore gives a new one)

    @property
    def is_leader(self) -> bool:
        """True when this member is the leader."""
        return self.member_id == self.leader_id != 0


@contextlib.contextmanager
def channel(access: EtcdAccess, endpoint: str) -> Iterator[grpc.Channel]:
    """An open gRPC channel to endpoint, closed afterwards."""
    netloc = endpoint.split("://", 1)[1]
    if endpoint.startswith("https://"):
        chan = grpc.secure_channel(netloc, access.credentials(), options=_OPTIONS)
    else:
        chan = grpc.insecure_channel(netloc, options=_OPTIONS)
    try:
        yield chan
    finally:
        chan.close()


def _call(access: EtcdAccess, endpoint: str, step: str, fn: Callable[[grpc.Channel], T]) -> T:
    try:
        with channel(access, endpoint) as chan:
            return fn(chan)
    except grpc.RpcError as exc:
        raise _unavailable(exc, step, endpoint, access) from None


def _unavailable(exc: grpc.RpcError, step: str, endpoint: str, access: EtcdAccess) -> EtcdUnavailable:
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "ERROR"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if "ssl_error_ssl" in details.lower():  # a refused certificate (a dropped link during a handshake is not)
        return EtcdTLSRefused(_tls_reason(details, endpoint, access), step=step, node=endpoint)
    return EtcdUnavailable(f"{code}: {details}", step=step, node=endpoint)


def _tls_reason(details: str, endpoint: str, access: EtcdAccess) -> str:
    """What a failed TLS handshake with endpoint means, in the words of the block's fields (ca_pem, cert_pem)."""
    low = details.lower()
    cause = details.rsplit("SSL_ERROR_SSL: ", 1)[-1].strip()
    if any(s in low for s in SERVER_EXPIRED):
        return f"TLS handshake failed: the certificate of member {endpoint} has expired or is not valid yet ({cause})"
    if any(s in low for s in SERVER_NOT_TRUSTED):
        return (
            f"TLS handshake failed: the certificate of member {endpoint} is not signed by the CA in the "
            f"cluster's ca_pem; use the cluster's ca.pem ({cause})"
        )
    if any(s in low for s in CLIENT_REFUSED):
        return f"TLS handshake failed: member {endpoint} refused the client certificate: " + _client_cert_problem(
            access
        )
    return f"TLS handshake with member {endpoint} failed: {cause}"


def _client_cert_problem(access: EtcdAccess) -> str:
    """Why a member may refuse our client certificate: its validity dates, else the CA that signed it."""
    from cryptography import x509  # only when a handshake failed: it costs ~10 MB of RSS in every backup

    try:
        cert = x509.load_pem_x509_certificate((access.cert or "").encode())
    except ValueError:
        return "cert_pem is not a PEM certificate"
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        return f"cert_pem (etcd.pem) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it"
    if cert.not_valid_before_utc > now:
        return f"cert_pem (etcd.pem) is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check clocks)"
    return f"cert_pem (etcd.pem, issuer {cert.issuer.rfc4514_string()}) is not signed by a CA the member trusts"


def _flag(message, number: int) -> bool:
    """A bool field pyetcd's old generated code does not know (e.g. isLearner), read from the unknown fields."""
    return any(f.field_number == number and f.data for f in UnknownFieldSet(message))


def members(access: EtcdAccess) -> list[MemberInfo]:
    """The cluster's members, asked of the first endpoint that answers."""
    errors = []
    for endpoint in access.endpoints:
        try:
            resp = _call(
                access,
                endpoint,
                "member list",
                lambda c: etcdrpc.ClusterStub(c).MemberList(etcdrpc.MemberListRequest(), timeout=access.timeout),
            )
        except EtcdUnavailable as exc:
            errors.append(exc)
            continue
        return [
            MemberInfo(
                id=m.ID,
                name=m.name,
                peer_urls=tuple(m.peerURLs),
                client_urls=tuple(m.clientURLs),
                is_learner=_flag(m, MEMBER_IS_LEARNER),
            )
            for m in resp.members
        ]
    raise all_failed("no endpoint answered", errors, step="member list")


def status(access: EtcdAccess, endpoint: str) -> EndpointStatus:
    """The status of one endpoint (version, db size, leader, raft index, revision)."""
    resp = _call(
        access,
        endpoint,
        "endpoint status",
        lambda c: etcdrpc.MaintenanceStub(c).Status(etcdrpc.StatusRequest(), timeout=access.timeout),
    )
    return EndpointStatus(
        endpoint=endpoint,
        version=resp.version,
        db_size=resp.dbSize,
        leader_id=resp.leader,
        member_id=resp.header.member_id,
        raft_index=resp.raftIndex,
        raft_term=resp.raftTerm,
        revision=resp.header.revision,
        is_learner=_flag(resp, STATUS_IS_LEARNER),
        cluster_id=resp.header.cluster_id,
    )


def key_count(access: EtcdAccess, endpoint: str) -> tuple[int, int]:
    """(revision, number of keys) as this member sees them now (serializable, count only)."""
    request = etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True, serializable=True)
    resp = _call(access, endpoint, "count keys", lambda c: etcdrpc.KVStub(c).Range(request, timeout=access.timeout))
    return resp.header.revision, resp.count


def health(access: EtcdAccess, *, rounds: int = HEALTH_ROUNDS, pause: float = HEALTH_PAUSE) -> dict[str, str]:
    """Per endpoint 'ok' when a linearizable read succeeds (`etcdctl endpoint health`), else the error.

    Endpoints that fail are asked again, up to `rounds` times `pause` seconds apart: a leader
    election right after a failure can fail one check of a good member (a refused TLS handshake
    is not asked again: waiting does not change a certificate).
    """
    result, final = _health_once(access, access.endpoints)
    for _ in range(rounds - 1):
        bad = [e for e, state in result.items() if state != "ok" and e not in final]
        if not bad:
            break
        time.sleep(pause)
        states, refused = _health_once(access, bad)
        result.update(states)
        final |= refused
    return result


def _health_once(access: EtcdAccess, endpoints: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """One linearizable read per endpoint, all at once: each endpoint's state, and those a retry cannot fix."""
    request = etcdrpc.RangeRequest(key=b"health")

    def check(endpoint: str) -> tuple[str, bool]:
        try:
            _call(
                access, endpoint, "endpoint health", lambda c: etcdrpc.KVStub(c).Range(request, timeout=access.timeout)
            )
            return "ok", False
        except EtcdUnavailable as exc:
            return ("ok" if "PERMISSION_DENIED" in exc.message else exc.message), not exc.transient

    endpoints = list(endpoints)
    with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        answers = dict(zip(endpoints, pool.map(check, endpoints), strict=True))
    return {e: state for e, (state, _) in answers.items()}, {e for e, (_, final) in answers.items() if final}


def pick_sources(access: EtcdAccess) -> list[str]:
    """Endpoints of reachable voting members to snapshot from, leader first, then by raft index."""
    found, errors = [], []
    for endpoint in access.endpoints:
        try:
            st = status(access, endpoint)
        except EtcdUnavailable as exc:
            errors.append(exc)
            continue
        if not st.is_learner:
            found.append(st)
    if not found:
        raise all_failed("no voting member answered", errors, step="pick snapshot source")
    found.sort(key=lambda s: (not s.is_leader, -s.raft_index))
    return [s.endpoint for s in found]


def all_failed(what: str, errors: list[EtcdUnavailable], step: str) -> EtcdUnavailable:
    """One error for a step every member failed: each member's reason; transient if any of them is."""
    error = EtcdUnavailable(f"{what}: " + "; ".join(map(str, errors)), step=step)
    error.transient = not errors or any(e.transient for e in errors)
    return error


class SnapshotStream:
    """The Maintenance snapshot of one member as an iterator of chunks; `total` is known up front."""

    def __init__(self, access: EtcdAccess, endpoint: str, db_size: int = 0):
        self.endpoint = endpoint
        self._access = access
        self._chan_cm = channel(access, endpoint)
        chan = self._chan_cm.__enter__()
        deadline = access.timeout + max(60.0, db_size / MIN_SNAPSHOT_RATE)
        try:
            self._call = etcdrpc.MaintenanceStub(chan).Snapshot(etcdrpc.SnapshotRequest(), timeout=deadline)
            self._first = next(self._call)
        except grpc.RpcError as exc:
            self.close()
            raise _unavailable(exc, "snapshot", endpoint, access) from None
        except StopIteration:
            self.close()
            raise EtcdUnavailable("snapshot stream ended before any data", step="snapshot", node=endpoint) from None
        self.total = self._first.remaining_bytes + len(self._first.blob) + TRAILER

    def __iter__(self) -> Iterator[bytes]:
        yield self._first.blob
        try:
            for response in self._call:
                yield response.blob
        except grpc.RpcError as exc:
            raise _unavailable(exc, "snapshot", self.endpoint, self._access) from None

    def close(self) -> None:
        """Cancel the stream if still running and close the channel."""
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()
        self._chan_cm.__exit__(None, None, None)

    def __enter__(self) -> SnapshotStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
