"""Run the emulator by hand for a notebook session:

    python -m tests.batch_emulator --port 8123 --azurite http://127.0.0.1:10000

Prints the account URL, name and key, then serves until Ctrl-C.
"""
from __future__ import annotations

import argparse
import signal
import threading

from .service import BatchEmulator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.batch_emulator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--account", default="testbatch")
    ap.add_argument("--key", default=None, help="base64 account key (random by default)")
    ap.add_argument("--azurite", default=None, help="Azurite blob endpoint, e.g. http://127.0.0.1:10000")
    ap.add_argument("--tls", action="store_true", help="serve https with a self-signed certificate (bearer auth)")
    ap.add_argument("--node-delay", type=float, default=0.5, help="seconds in each of creating/starting")
    args = ap.parse_args(argv)
    svc = BatchEmulator(account=args.account, key=args.key, port=args.port, tls=args.tls,
                        node_state_delay=args.node_delay, blob_endpoint=args.azurite,
                        token_validator=(lambda t: bool(t)) if args.tls else None)
    url = svc.start()
    print(f"Batch emulator listening at {url}")
    print(f"  account name: {svc.account}")
    print(f"  account key:  {svc.key}")
    if svc.ca_cert:
        print(f"  CA cert:      {svc.ca_cert}")
    if args.azurite:
        print(f"  storage:      {args.azurite}/devstoreaccount1")
    print("Ctrl-C to stop.", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: done.set())
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    svc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
