"""Claims on grid jobs, kept on the team's DVC remote through DVC's own filesystem for it (a directory, S3, GCS,
Azure, SSH…), so that two grids on one remote never compute the same configuration at once.

Object stores have no exclusive create, so a claim uses only what every store has: write a new object, list a
prefix, read, delete. Each claimant writes its own object `sonotune-claims/<job folder>/<owner>.json` (never
another's), then lists the prefix:
- it wins when the listing shows its own claim alone (live claims only: expired ones are ignored, and deleted);
- it loses at once when a live claim comes before its own in the order (created time, owner id): it deletes its
  object and leaves the job to that claimant;
- when it comes first but sees others, it lists again every `POLL_S` for up to `SETTLE_S`: the later claimants see
  it and withdraw, and it wins once alone; a claim still there after that is a claimant that had already won
  (it listed before this one wrote), so this one loses.
Winning needs a listing with one's own claim alone, taken after one's own write; of two such listings, one was
taken after the other claimant's write, so with read-after-write and list-after-write consistency (a local
directory; S3 since December 2020; GCS; Azure Blob) at most one claimant wins, whatever the clocks say. The order
only decides who withdraws. Release deletes one's own object only; a crashed grid's claim expires.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import random
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CLAIMS_FOLDER = "sonotune-claims"
SETTLE_S = 5.0  # far longer than a claimant takes from its write to its listing and withdrawal
POLL_S = 0.2
ROUNDS = 3  # claim attempts when every claimant withdrew (none was left holding the job)


def new_owner() -> str:
    """This grid's id: user, host, process and a random part (unique, and readable in the listing)."""
    who = f"{getpass.getuser()}@{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return re.sub(r"[^\w.@-]", "_", who)


@dataclass(frozen=True)
class ClaimStore:
    """The claims folder on a remote: `fs` is DVC's filesystem for the remote, `root` the folder's path in it."""

    fs: object
    root: str
    owner: str = field(default_factory=new_owner)

    def folder(self, job: str) -> str:
        return self.fs.join(self.root, job)

    def own_path(self, job: str) -> str:
        return self.fs.join(self.folder(job), f"{self.owner}.json")


def store_of(root: Path, cache_as_remote: bool) -> ClaimStore:
    """The claims store of the workspace's default DVC remote, or of its cache when the workers use that as their
    remote (no default remote): the same DVC filesystem either way."""
    from dvc.fs import LocalFileSystem
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if cache_as_remote:
            fs, path = LocalFileSystem(), repo.cache.local_cache_dir
        else:
            remote = repo.cloud.get_remote()
            fs, path = remote.fs, remote.path
    return ClaimStore(fs, fs.join(path, CLAIMS_FOLDER))


def live_claims(store: ClaimStore, job: str) -> list[dict]:
    """The job's unexpired claims, first first in the order (created, owner); expired ones are deleted."""
    store.fs.fs.invalidate_cache(store.folder(job))  # fsspec caches listings (s3fs, gcsfs): list the store itself
    try:
        paths = [p for p in store.fs.find(store.folder(job)) if p.endswith(".json")]
    except FileNotFoundError:
        return []
    claims = []
    for path in paths:
        try:
            claim = json.loads(store.fs.cat_file(path))
        except FileNotFoundError:  # withdrawn between the listing and the read
            continue
        except ValueError:  # not a claim this code wrote: ignored
            continue
        if claim.get("expires", 0) < time.time():
            _delete(store, path)  # a crashed grid's claim: anyone may delete it
            continue
        claims.append(claim)
    return sorted(claims, key=lambda c: (c.get("created", 0), c.get("owner", "")))


def claim(store: ClaimStore, job: str, ttl_s: float) -> bool:
    """Claim `job` for `ttl_s` seconds (see the module docstring); False when another claimant holds it."""
    for _ in range(ROUNDS):
        created = time.time()
        record = {"owner": store.owner, "user": getpass.getuser(), "host": socket.gethostname(),
                  "pid": os.getpid(), "created": created, "expires": created + ttl_s}
        store.fs.upload_fobj(io.BytesIO(json.dumps(record).encode()), store.own_path(job))
        if _settle(store, job):
            return True
        release(store, job)
        if live_claims(store, job):
            return False  # left to that claimant
        time.sleep(random.uniform(POLL_S, 5 * POLL_S))  # everyone withdrew: try again, at different moments
    return False


def claim_each(store: ClaimStore, jobs: list[str], ttl_s: float) -> set[str]:
    """The jobs of `jobs` this grid now holds; interrupted (Ctrl-C), it leaves none of its claims behind."""
    try:
        return {job for job in jobs if claim(store, job, ttl_s)}
    except BaseException:
        for job in jobs:
            release(store, job)
        raise


def _settle(store: ClaimStore, job: str) -> bool:
    deadline = time.monotonic() + SETTLE_S
    while True:
        owners = [c.get("owner") for c in live_claims(store, job)]
        if owners == [store.owner]:
            return True
        if not owners or owners[0] != store.owner or time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def release(store: ClaimStore, job: str) -> None:
    """Delete this grid's own claim on `job` (never another's)."""
    _delete(store, store.own_path(job))


def held_by_others(store: ClaimStore, job: str) -> bool:
    return any(c.get("owner") != store.owner for c in live_claims(store, job))


def _delete(store: ClaimStore, path: str) -> None:
    try:
        store.fs.rm_file(path)
    except FileNotFoundError:
        pass
