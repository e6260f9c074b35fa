"""Benchmark the crypto envelope: pure-Python vs C (cffi) framing + HMAC backend.

Usage: python bench/crypto.py [--quick]

Prints, per cipher/hash/datagram size, the per-datagram cost of wrap and unwrap for both
backends and the ratio pure/C (> 1 means the C path is faster).  Sizes: 70 bytes (an ORF
token), 300 (a small mcast) and 1455 (the largest normal mcast, spec §1.7).  Each figure is
the best of several repeats, so it measures the code, not scheduler noise.
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit

from corosync.exec.transport import crypto

SIZES = (70, 300, 1455)
CASES = (("none", "sha1"), ("none", "sha256"), ("none", "sha512"), ("aes256", "sha256"))


def per_call_us(fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def interleaved_us(fns: list, number: int, repeat: int) -> list[float]:
    """Best per-call time of each function, measured in alternation so that load from
    other processes hits every backend alike (the ratio is what matters)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], timeit.timeit(fn, number=number))
    return [b / number * 1e6 for b in best]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    number, repeat = (2000, 3) if args.quick else (20000, 5)
    if not crypto.C_AVAILABLE:
        print("corosync._ccrypto is not built: only the pure backend can be measured", file=sys.stderr)
    backends = ("pure", "c") if crypto.C_AVAILABLE else ("pure",)
    key = os.urandom(256)
    salt = os.urandom(16)
    print(f"{'cipher':7} {'hash':7} {'size':>5} {'op':6} " + " ".join(f"{b + ' us':>9}" for b in backends)
          + ("   pure/c" if len(backends) == 2 else ""))
    for cipher, hash_ in CASES:
        for size in SIZES:
            payload = os.urandom(size)
            envs = {b: crypto.CryptoEnvelope(cipher, hash_, key, backend=b, rng=lambda n: salt) for b in backends}
            datagrams = {b: e.wrap(payload) for b, e in envs.items()}
            if len(set(datagrams.values())) != 1:
                print("backends disagree on the wrapped bytes!", file=sys.stderr)
                return 1
            for op in ("wrap", "unwrap"):
                if op == "wrap":
                    fns = [lambda env=envs[b]: env.wrap(payload) for b in backends]
                else:
                    fns = [lambda env=envs[b], dg=datagrams[b]: env.unwrap(dg) for b in backends]
                results = interleaved_us(fns, number // 10, repeat * 10)
                line = f"{cipher:7} {hash_:7} {size:5} {op:6} " + " ".join(f"{r:9.2f}" for r in results)
                if len(results) == 2:
                    line += f" {results[0] / results[1]:8.2f}x"
                print(line)
    # Why the envelope keeps long-lived CBC objects: a fresh pycryptodome object per datagram.
    from Crypto.Cipher import AES
    for size in (70, 1455):
        padded = os.urandom(size - size % 16 + 16)
        chain = crypto._CbcChain(key[:32])
        fresh, kept = interleaved_us(
            [lambda: AES.new(key[:32], AES.MODE_CBC, iv=salt).encrypt(padded),
             lambda: chain.encrypt(salt, padded[:-16])], number // 10, repeat * 10)
        print(f"AES-256-CBC {size:5} bytes: new object per datagram {fresh:.2f} us, "
              f"long-lived re-aimed object {kept:.2f} us ({fresh / kept:.2f}x)")
    # Forged datagrams: the cost an attacker can impose per packet (one HMAC, no decrypt).
    rejectors = []
    for b in backends:
        env = crypto.CryptoEnvelope("aes256", "sha256", key, backend=b, rng=lambda n: salt)
        forged = bytearray(env.wrap(os.urandom(1455)))
        forged[-1] ^= 1

        def reject(env: crypto.CryptoEnvelope = env, forged_b: bytes = bytes(forged)) -> None:
            try:
                env.unwrap(forged_b)
            except crypto.CryptoError:
                pass

        rejectors.append(reject)
    for b, t in zip(backends, interleaved_us(rejectors, number // 10, repeat * 10)):
        print(f"forged 1455-byte aes256/sha256 datagram rejected in {t:.2f} us ({b})")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
