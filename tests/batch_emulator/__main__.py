"""Run the emulator by hand for a notebook session:

    python -m tests.batch_emulator --port 8123 --azurite http://127.0.0.1:10000

Prints the account URL, name and key, then serves until Ctrl-C.

    python -m tests.batch_emulator --port 0 --control --work-dir DIR --key KEY

is how a benchmark runs the service in a process of its own (a real service never shares the
client's interpreter): one JSON line with the URL, account and key, then a command per stdin
line, each answered by one JSON line (``requests``: [operation id, time] of each request so far;
``clear``: forget them); the service stops when stdin closes.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
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
    ap.add_argument("--work-dir", default=None, help="folder for the nodes (a temporary one by default)")
    ap.add_argument("--control", action="store_true", help="a JSON handshake, then commands on stdin (see above)")
    args = ap.parse_args(argv)
    svc = BatchEmulator(account=args.account, key=args.key, port=args.port, tls=args.tls,
                        node_state_delay=args.node_delay if not args.control else 0.0, blob_endpoint=args.azurite,
                        token_validator=(lambda t: bool(t)) if args.tls else None, work_dir=args.work_dir)
    url = svc.start()
    if args.control:
        return _controlled(svc)
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


def _controlled(svc: BatchEmulator) -> int:
    print(json.dumps({"url": svc.url, "account": svc.account, "key": svc.key}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "requests":
                answer = [[r.operation_id, r.time] for r in list(svc.requests)]
            elif command == "clear":
                svc.requests.clear()
                answer = []
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        svc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
