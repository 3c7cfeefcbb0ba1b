"""How fast is custom-certificate intake, in-process, next to cryptography's verifier alone?

Why: the upload path has a 2 ms budget per leaf + 2 intermediates bundle. This
prints validations/second and µs/bundle for

1. ``CustomCertificateValidator.validate`` (parse PEM bundle + key, choose the leaf,
   our own checks, path building, re-serialisation, info),
2. cryptography's verifier alone, built once, on pre-parsed certificates,
3. the same verifier with the PEM bundle parsed on every call,

for an all-ECDSA P-256 hierarchy and an RSA-2048 one (a realistic mix of what CAs
issue). Run from the repository root::

    .venv/bin/python bench/validate.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pki

import cryptography
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.x509 import CustomCertificateValidator
from tests.pki import NOW, KeyKind, TestPKI, cached_key

DOMAIN = "www.example.com"


def measure(work: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``work`` repeatedly for about ``seconds``; return (iterations, µs per call)."""
    for _ in range(50):  # warm caches
        work()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            work()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count, (now - start) / count * 1e6


def report(label: str, work: Callable[[], object], seconds: float) -> float:
    count, micros = measure(work, seconds)
    print(f"  {label:<46} {1e6 / micros:>9,.0f} /s  {micros:>8.1f} µs  (n={count})")
    return micros


def run(kind: str, root_key: KeyKind, leaf_key: KeyKind, slot: int, seconds: float) -> float:
    pki = TestPKI(kind, key_slot=slot, root_key=root_key)
    leaf = pki.leaf(DOMAIN, key=cached_key(leaf_key, slot + 5))
    bundle = pki.bundle(leaf)
    key = leaf.key_pem()
    print(
        f"\n{kind}: root {root_key}, intermediates p256, leaf {leaf_key}; "
        f"bundle {len(bundle)} B PEM (leaf + 2 intermediates), key {len(key)} B PKCS#8 PEM"
    )
    validator = CustomCertificateValidator([pki.root.cert])
    store = Store([pki.root.cert])
    verifier = PolicyBuilder().store(store).time(NOW).build_server_verifier(x509.DNSName(DOMAIN))
    intermediates = [pki.int2.cert, pki.int1.cert]

    def verifier_only() -> object:
        return verifier.verify(leaf.cert, intermediates)

    def verifier_with_parsing() -> object:
        certs = x509.load_pem_x509_certificates(bundle)
        return verifier.verify(certs[0], certs[1:])

    def full() -> object:
        return validator.validate(DOMAIN, bundle, key, NOW)

    report("cryptography verifier (built once)", verifier_only, seconds)
    report("cryptography verifier + PEM parsing", verifier_with_parsing, seconds)
    return report("CustomCertificateValidator.validate (whole intake)", full, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f"; cores: {os.cpu_count()} (usable {affinity}); Python {platform.python_version()}; "
        f"cryptography {cryptography.__version__}; single thread, in-process"
    )
    print(f"settings: {args.seconds:g} s per measurement, domain {DOMAIN}, budget 2000 µs")
    worst = max(
        run("ECDSA", "p256", "p256", 0, args.seconds),
        run("RSA", "rsa2048", "rsa2048", 1, args.seconds),
    )
    print(
        f"\nworst whole-intake time: {worst:.0f} µs ({'within' if worst < 2000 else 'OVER'} budget)"
    )


if __name__ == "__main__":
    main()
