"""Follow every change of a cluster from a start revision: one watch over the whole keyspace, failing over.

The follower opens etcd's bidirectional Watch stream (pyetcd's raw `etcdrpc.WatchStub`) on the best
member (etcd.pick_sources: leader first), asks for fragmented responses (so a revision larger than
gRPC's message limit still arrives), and sends a progress request every `progress_interval` seconds:
an idle but healthy member answers each one, so silence longer than `stall_timeout` means the member
or the link is gone and the follower cancels the stream and resumes on another member from the next
revision it has not yet yielded (no gap, no duplicate). `hasleader` metadata makes a member that lost
its leader end the stream instead of going quiet. etcd answers a compacted start revision with
`compact_revision`: that raises StartCompacted. Every revision of etcd changes at least one key, so
in a whole-keyspace watch the revisions are consecutive; a skipped one raises HistoryBroken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.unknown_fields import UnknownFieldSet
from pyetcd import etcdrpc

from etcd_backup import etcd
from etcd_backup.continuous.errors import HistoryBroken, StartCompacted, WatchBroken
from etcd_backup.continuous.records import Revision
from etcd_backup.errors import EtcdUnavailable

FRAGMENT_REQUEST = b"\x40\x01"  # WatchCreateRequest.fragment (field 8) = true; pyetcd's generated code predates it
RESPONSE_FRAGMENT = 7  # WatchResponse.fragment: more of the same response follows
REQUIRE_LEADER = (("hasleader", "true"),)


@dataclass(frozen=True)
class FollowerState:
    """Where the follower is: next revision wanted, the cluster's newest revision seen, member, last time current."""

    next_revision: int
    cluster_revision: int
    endpoint: str
    etcd_cluster_id: str
    current_at: float  # time.time() when etcd last confirmed nothing newer existed (0: not yet)
    failovers: int
    last_error: str


class Follower:
    """Iterate over the cluster's revisions from start_revision on, as Revision records, until stop() is called.

    With etcd_cluster_id (hex), a member of another etcd cluster (the cluster was restored meanwhile) raises
    HistoryBroken at once instead of being followed.
    """

    def __init__(
        self,
        access: etcd.EtcdAccess,
        start_revision: int,
        *,
        progress_interval: float = 1.0,
        stall_timeout: float | None = None,
        give_up_after: float | None = 300.0,
        sources: Callable[[etcd.EtcdAccess], Sequence[str]] = etcd.pick_sources,
        etcd_cluster_id: str = "",
    ):
        if start_revision < 1:
            raise ValueError(f"start revision must be >= 1, not {start_revision}")
        self.access = access
        self.progress_interval = progress_interval
        self.stall_timeout = stall_timeout or max(access.timeout, 3 * progress_interval)
        self.give_up_after = give_up_after
        self._sources = sources
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._waiting_since: float | None = None  # when the follower began waiting for etcd (None: busy)
        self._next = start_revision
        self._cluster_revision = start_revision - 1
        self._endpoint = ""
        self._etcd_cluster_id = f"{int(etcd_cluster_id, 16):x}" if etcd_cluster_id else ""  # the one expected
        self._current_at = 0.0
        self._failovers = 0
        self._last_error = ""
        self._failed_endpoint = ""
        self.created = threading.Event()  # set once a watch stream is open on a member

    def state(self) -> FollowerState:
        """A consistent-enough snapshot of the follower's position, safe to call from any thread."""
        return FollowerState(
            self._next,
            max(self._cluster_revision, self._next - 1),
            self._endpoint,
            self._etcd_cluster_id,
            self._current_at,
            self._failovers,
            self._last_error,
        )

    @property
    def next_revision(self) -> int:
        """The next revision the follower will yield."""
        return self._next

    @property
    def endpoint(self) -> str:
        """The member the follower watches now ('' between members)."""
        return self._endpoint

    @property
    def etcd_cluster_id(self) -> str:
        """etcd's own cluster id (hex) from the response headers."""
        return self._etcd_cluster_id

    def stop(self) -> None:
        """Make the iteration end soon (from any thread): the open stream is canceled."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    @property
    def stopped(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def __iter__(self) -> Iterator[Revision]:
        outage_since: float | None = None
        delay = 0.2
        while not self._stop.is_set():
            for endpoint in self._candidates():
                try:
                    for revision in self._watch(endpoint):
                        outage_since, delay = None, 0.2
                        yield revision
                except (EtcdUnavailable, WatchBroken) as exc:
                    self._last_error, self._failed_endpoint = str(exc), endpoint
                    self._failovers += 1
                finally:
                    self._endpoint, self._call = "", None
                if self._stop.is_set():
                    return
            outage_since = outage_since or time.monotonic()
            if self.give_up_after is not None and time.monotonic() - outage_since > self.give_up_after:
                raise EtcdUnavailable(
                    f"no member could be watched for {self.give_up_after:.0f} s; last error: {self._last_error}",
                    step="watch",
                )
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _candidates(self) -> list[str]:
        """Members to try in order (leader first); the one that failed last goes to the end."""
        try:
            order = list(self._sources(self.access))
        except EtcdUnavailable as exc:
            self._last_error = str(exc)
            return []
        failed = self._failed_endpoint
        return [e for e in order if e != failed] + [e for e in order if e == failed]

    def _watch(self, endpoint: str) -> Iterator[Revision]:
        """Watch from the next revision on one member; yield its revisions until stopped or the stream breaks."""
        start = self._next
        self._waiting_since = time.monotonic()
        with etcd.channel(self.access, endpoint) as chan:
            call = etcdrpc.WatchStub(chan).Watch(self._requests(start), metadata=REQUIRE_LEADER)
            self._call, self._endpoint = call, endpoint
            if self._stop.is_set():
                call.cancel()
            try:
                yield from self._responses(call, endpoint, start)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code().name if exc.code() else "ERROR"
                stalled = f" (no answer within {self.stall_timeout:.0f} s)" if code == "CANCELLED" else ""
                raise EtcdUnavailable(f"{code}: {exc.details()}{stalled}", step="watch", node=endpoint) from None
            if not self._stop.is_set():
                raise WatchBroken("etcd ended the watch stream", step="watch", node=endpoint)

    def _requests(self, start: int) -> Iterator[etcdrpc.WatchRequest]:
        """The request side: create the watch, then a progress request every interval; cancel on a stall."""
        create = etcdrpc.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=start, progress_notify=True)
        create.MergeFromString(FRAGMENT_REQUEST)
        yield etcdrpc.WatchRequest(create_request=create)
        while not self._stop.wait(self.progress_interval):
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.stall_timeout:
                call = self._call
                if call is not None:
                    call.cancel()
                return
            yield etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest())

    def _responses(self, call, endpoint: str, start: int) -> Iterator[Revision]:
        pending: list = []
        for resp in self._timed(call):
            self._check(resp, endpoint, start)
            if resp.created:
                self.created.set()
                continue
            self._cluster_revision = max(self._cluster_revision, resp.header.revision)
            pending.extend(resp.events)
            if resp.events and _more_follows(resp):
                continue
            if not pending:
                if resp.header.revision == self._next - 1:
                    self._current_at = time.time()
                continue
            yield from self._split(pending, time.time_ns(), endpoint)
            pending = []
            if resp.header.revision == self._next - 1:
                self._current_at = time.time()

    def _timed(self, call) -> Iterator:
        """The stream's responses; only time spent waiting for etcd counts towards a stall, not the consumer's."""
        while True:
            self._waiting_since = time.monotonic()
            try:
                resp = next(call)
            except StopIteration:
                return
            self._waiting_since = None
            yield resp

    def _check(self, resp, endpoint: str, start: int) -> None:
        if resp.compact_revision:
            raise StartCompacted(start, resp.compact_revision, node=endpoint)
        if resp.canceled:
            reason = resp.cancel_reason or "no reason given"
            raise WatchBroken(f"etcd canceled the watch: {reason}", step="watch", node=endpoint)
        cluster_id = f"{resp.header.cluster_id:x}"
        if resp.header.cluster_id and self._etcd_cluster_id and cluster_id != self._etcd_cluster_id:
            raise HistoryBroken(
                f"member belongs to etcd cluster {cluster_id}, not {self._etcd_cluster_id}", step="watch", node=endpoint
            )
        if resp.header.cluster_id:
            self._etcd_cluster_id = cluster_id
        if resp.created and resp.header.revision < self._next - 1:  # a lagging member, or a cluster restored
            raise WatchBroken(
                f"member is at revision {resp.header.revision} but revisions up to {self._next - 1} were already "
                "followed (lagging, or restored from an older snapshot)",
                step="watch",
                node=endpoint,
            )

    def _split(self, events: list, received_ns: int, endpoint: str) -> Iterator[Revision]:
        """Group events by revision, drop revisions already yielded, refuse a skipped one."""
        group: list[bytes] = []
        current = events[0].kv.mod_revision
        for event in events:
            revision = event.kv.mod_revision
            if revision != current:
                yield from self._emit(current, group, received_ns, endpoint)
                group, current = [], revision
            group.append(event.SerializeToString())
        yield from self._emit(current, group, received_ns, endpoint)

    def _emit(self, revision: int, events: list[bytes], received_ns: int, endpoint: str) -> Iterator[Revision]:
        if revision < self._next:
            return  # already yielded (a member answered from an older point): never a duplicate
        if revision > self._next:
            raise HistoryBroken(
                f"the watch skipped from revision {self._next} to {revision}", step="watch", node=endpoint
            )
        self._next = revision + 1
        yield Revision(revision, received_ns, tuple(events))


def _more_follows(resp) -> bool:
    """True when etcd split this response and more fragments of it follow."""
    return any(f.field_number == RESPONSE_FRAGMENT and f.data for f in UnknownFieldSet(resp))
