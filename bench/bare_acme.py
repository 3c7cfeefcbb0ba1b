"""Baseline: the acme library alone, 16 threads, 50 ms polling, N certificates.

This is the floor the broker's issuance benchmark is compared against: no
store, no scheduler, no asyncio, just ``ClientV2`` calls per certificate in a
thread pool, answering HTTP-01 from an in-process responder. Pebble runs with
``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_AUTHZREUSE=0`` (every order validates) and
no nonce rejection.

    .venv/bin/python bench/bare_acme.py [N]

``run_bare(pebble, n)`` is importable by other benchmarks (they need the repo
root on ``sys.path``, which running from /work/main gives them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import josepy as jose
from acme import challenges, client, messages
from cryptography.hazmat.primitives.asymmetric import ec

from certbroker.acme.http01 import Http01Responder
from certbroker.acme.keys import generate_private_key, make_csr
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble

THREADS = 16
POLL = 0.05


def _issue_one(acme: client.ClientV2, key: jose.JWK, responder: Http01Responder, name: str) -> str:
    csr = make_csr(generate_private_key(), [name])
    orderr = acme.new_order(csr)
    tokens = []
    try:
        for authzr in orderr.authorizations:
            challb = next(
                c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.chall.response_and_validation(key)
            token = challb.chall.encode("token")
            responder.add(token, validation)
            tokens.append(token)
            acme.answer_challenge(challb, response)
        for authzr in orderr.authorizations:
            while True:
                updated, _ = acme.poll(authzr)
                if updated.body.status != messages.STATUS_PENDING:
                    break
                time.sleep(POLL)
            if updated.body.status != messages.STATUS_VALID:
                raise RuntimeError(f"authorization {updated.body.status}")
        acme.begin_finalization(orderr)
        while True:
            order = messages.Order.from_json(acme._post_as_get(orderr.uri).json())
            if order.status == messages.STATUS_VALID:
                return str(acme._post_as_get(order.certificate).text)
            if order.status == messages.STATUS_INVALID:
                raise RuntimeError("order invalid")
            time.sleep(POLL)
    finally:
        for token in tokens:
            responder.remove(token)


def run_bare(
    pebble: Pebble, n: int, responder: Http01Responder | None = None, *, warmup: int = 0
) -> float:
    """Issue ``n`` certificates with bare acme calls; return wall seconds (account excluded)."""
    return run_bare_timed(pebble, n, responder, warmup=warmup)[0]


def run_bare_timed(
    pebble: Pebble, n: int, responder: Http01Responder | None = None, *, warmup: int = 0
) -> tuple[float, float]:
    """``run_bare``, returning (wall seconds, this process's CPU seconds) of the timed batch.

    ``responder`` must be the one on ``pebble.http_port``; without one, a
    responder is started on that port in a background event loop thread.
    ``warmup`` certificates are issued first, one after another and untimed,
    as bench/issuance.py does for the broker (the same warm-up on both sides).
    """
    if responder is None:
        return _with_background_responder(pebble, n, warmup)
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    local = threading.local()
    nets: list[client.ClientNetwork] = []
    directory = client.ClientV2.get_directory(
        pebble.directory_url, client.ClientNetwork(verify_ssl=pebble.ca_bundle_path)
    )
    reg_net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=pebble.ca_bundle_path)
    regr = client.ClientV2(directory, reg_net).new_account(
        messages.NewRegistration(terms_of_service_agreed=True)
    )

    run = uuid.uuid4().hex[:8]  # names of their own on every run against one Pebble

    def one(i: int) -> str:
        acme = getattr(local, "acme", None)
        if acme is None:
            net = client.ClientNetwork(
                key, account=regr, alg=jose.ES256, verify_ssl=pebble.ca_bundle_path
            )
            nets.append(net)
            acme = local.acme = client.ClientV2(directory, net)
        return _issue_one(acme, key, responder, f"www.bare{i}-{run}.test")

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for i in range(warmup):
            pool.submit(one, n + i).result()
        started, cpu_started = time.perf_counter(), time.process_time()
        chains = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    assert len(chains) == n and all("BEGIN CERTIFICATE" in c for c in chains)
    for net in nets:
        net.session.close()
    return elapsed, cpu


def _with_background_responder(pebble: Pebble, n: int, warmup: int) -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    responder = Http01Responder()
    asyncio.run_coroutine_threadsafe(responder.start("127.0.0.1", pebble.http_port), loop).result()
    try:
        safe = _ThreadSafe(responder, loop)
        return run_bare_timed(pebble, n, safe, warmup=warmup)  # type: ignore[arg-type]
    finally:
        asyncio.run_coroutine_threadsafe(responder.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class _ThreadSafe:
    """Forwards add/remove from worker threads to the responder's loop."""

    def __init__(self, responder: Http01Responder, loop: asyncio.AbstractEventLoop) -> None:
        self._r = responder
        self._loop = loop

    def add(self, token: str, key_authorization: str) -> None:
        self._call(self._r.add, token, key_authorization)

    def remove(self, token: str) -> None:
        self._call(self._r.remove, token)

    def _call(self, fn: Callable[..., None], *args: str) -> None:
        """Run on the loop and wait, so the answer is live before the CA is told."""

        async def call() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(call(), self._loop).result()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    from tests.infra.ports import free_port

    http_port = free_port()
    with (
        ChallTestSrv.running() as dns,
        Pebble.running(
            http_port=http_port,
            dns_server=dns.dns_address,
            nonce_reject_percent=0,
            authz_reuse_percent=0,
        ) as pebble,
    ):
        seconds = run_bare(pebble, n)
        assert pebble.issued_count() == n
    print(
        f"bare acme: {n} certificates in {seconds:.2f} s = {n / seconds:.1f} certs/s "
        f"({THREADS} threads, {POLL * 1000:.0f} ms polling)"
    )


if __name__ == "__main__":
    main()
