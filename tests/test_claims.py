"""Claims on grid jobs (sonotune.claims) on real DVC remotes through DVC's filesystem for each: a local directory,
and S3 (a `moto` S3 server on 127.0.0.1, DVC's `dvc-s3`): real processes racing for one job, expiry, release of
one's own claim only."""

from __future__ import annotations

import importlib.util
import io
import json
import multiprocessing
import subprocess
import time
from pathlib import Path

import pytest

from sonotune import claims
from tests.servers import free_port
from tests.workspace import BIN, run

RACERS = 8
ROUNDS = 4
HAS_S3 = all(importlib.util.find_spec(name) for name in ("moto", "dvc_s3"))
BUCKET = "sonotune-claims-test"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """An S3 API on 127.0.0.1 (moto's server, in memory) with an empty bucket."""
    if not HAS_S3:
        pytest.skip("moto and dvc-s3 are not installed: pip install -e '.[test]'")
    import boto3
    import requests

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _remote(kind: str, folder: Path, request) -> list[list[str]]:
    """The `dvc remote` commands of a default remote of `kind`."""
    if kind == "directory":
        return [["dvc", "remote", "add", "--default", "team", str(folder / "remote")]]
    endpoint = request.getfixturevalue("s3_endpoint")
    return [["dvc", "remote", "add", "--default", "team", f"s3://{BUCKET}/dvc"],
            ["dvc", "remote", "modify", "team", "endpointurl", endpoint],
            ["dvc", "remote", "modify", "team", "region", "us-east-1"],
            ["dvc", "remote", "modify", "--local", "team", "access_key_id", "testing"],
            ["dvc", "remote", "modify", "--local", "team", "secret_access_key", "testing"]]


@pytest.fixture(scope="module", params=["directory", "s3"])
def repo(request, tmp_path_factory) -> Path:
    """A DVC project whose default remote is a local directory, or an S3 bucket."""
    folder = tmp_path_factory.mktemp(request.param)
    repo = folder / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    for command in _remote(request.param, folder, request):
        run(command, repo)
    return repo


@pytest.fixture
def store(repo, request) -> claims.ClaimStore:
    """The remote's claims store, in a folder of the test's own."""
    found = claims.store_of(repo, cache_as_remote=False)
    remote = run(["dvc", "remote", "list"], repo).stdout
    assert found.fs.protocol == ("s3" if "s3://" in remote else "local") and found.root.endswith(
        f"/{claims.CLAIMS_FOLDER}")
    return claims.ClaimStore(found.fs, found.fs.join(found.root, request.node.originalname))


def _race(repo: Path, root: str, start, decided, results) -> None:
    """One racer: for each round, claim the round's job at the same moment as the others; hold a won claim until
    every racer has decided, then release it."""
    mine = claims.ClaimStore(claims.store_of(repo, cache_as_remote=False).fs, root)  # its own filesystem, owner
    for round_ in range(ROUNDS):
        start.wait()
        won = claims.claim(mine, f"job-{round_}", ttl_s=60)
        results.put((round_, mine.owner, won))
        decided.wait()
        if won:
            claims.release(mine, f"job-{round_}")


def test_of_racing_processes_exactly_one_wins_every_round(repo, store):
    context = multiprocessing.get_context("fork")
    start, decided, results = context.Barrier(RACERS), context.Barrier(RACERS), context.Queue()
    racers = [context.Process(target=_race, args=(repo, store.root, start, decided, results)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(RACERS * ROUNDS)]
    for racer in racers:
        racer.join(timeout=60)
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    for round_ in range(ROUNDS):
        won = [owner for r, owner, ok in outcomes if r == round_ and ok]
        assert len(won) == 1, f"round {round_}: winners {won}"
        assert claims.live_claims(store, f"job-{round_}") == []  # losers withdrew, the winner released
    assert len({owner for _, owner, _ in outcomes}) == RACERS


def _write_claim(store: claims.ClaimStore, job: str, owner: str, created: float, expires: float) -> str:
    path = store.fs.join(store.folder(job), f"{owner}.json")
    record = {"owner": owner, "created": created, "expires": expires}
    store.fs.upload_fobj(io.BytesIO(json.dumps(record).encode()), path)
    return path


def test_an_expired_claim_is_ignored_and_deleted(store):
    stale = _write_claim(store, "job", "crashed-grid", time.time() - 7200, time.time() - 1)
    assert not claims.held_by_others(store, "job")
    assert not store.fs.exists(stale)  # anyone may delete an expired claim
    assert claims.claim(store, "job", ttl_s=60)
    assert [c["owner"] for c in claims.live_claims(store, "job")] == [store.owner]


def test_a_live_claim_keeps_the_job_and_release_deletes_only_ones_own(store):
    theirs = _write_claim(store, "job", "another-grid", time.time() - 1, time.time() + 3600)
    assert not claims.claim(store, "job", ttl_s=60)  # it came first: left to it
    assert not store.fs.exists(store.own_path("job"))  # the loser withdrew its own object
    claims.release(store, "job")
    assert store.fs.exists(theirs) and claims.held_by_others(store, "job")


def test_a_claim_that_stays_after_the_settle_time_won_before_this_one_wrote(store, monkeypatch):
    """A claimant that comes first in the order but still sees another claim after SETTLE_S loses: that claimant
    listed before this one wrote (clocks apart), so it had already won."""
    monkeypatch.setattr(claims, "SETTLE_S", 0.5)
    _write_claim(store, "job", "earlier-winner", time.time() + 60, time.time() + 3600)  # a clock ahead of ours
    started = time.monotonic()
    assert not claims.claim(store, "job", ttl_s=60)
    assert time.monotonic() - started >= 0.5
    assert [c["owner"] for c in claims.live_claims(store, "job")] == ["earlier-winner"]


def test_ctrl_c_while_claiming_leaves_none_of_ones_claims(store, monkeypatch):
    settle = claims._settle

    def interrupted_at_the_second(store_, job):
        if job == "job-1":
            raise KeyboardInterrupt
        return settle(store_, job)

    monkeypatch.setattr(claims, "_settle", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        claims.claim_each(store, ["job-0", "job-1", "job-2"], ttl_s=60)
    assert [claims.live_claims(store, f"job-{i}") for i in range(3)] == [[], [], []]
