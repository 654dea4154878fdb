"""`hedge keys create | list | revoke`: manage API keys in the key store, also while servers run
(they see a change within `keys.refresh_s`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from hedge import config
from hedge.keys import PERIODS, KeyStore, KeyStoreError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of USD, e.g. 25 or 0.5"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite amount of USD, 0 or more")
    return value


def add_arguments(keys: argparse.ArgumentParser) -> None:
    keys.add_argument("--config", help="hedge.yaml (for keys.path, policies and routes)")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key; it is printed once, never stored")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--policy", action="append", default=[], help="policy applied to every request (repeatable)"
    )
    create.add_argument(
        "--route",
        action="append",
        default=[],
        help="route the key may use (repeatable; default all)",
    )
    create.add_argument("--budget", type=_budget, help="USD per period (default: no budget)")
    create.add_argument("--period", choices=PERIODS, default="month", help="budget period (UTC)")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    create.add_argument("--max-body-bytes", type=_positive_int, help="largest request body")
    create.add_argument("--max-messages", type=_positive_int, help="most messages per request")
    create.add_argument("--max-tokens", type=_positive_int, help="largest max_tokens allowed")
    create.add_argument("--config", dest="config_", help=argparse.SUPPRESS)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--config", dest="config_", help=argparse.SUPPRESS)
    revoke = sub.add_parser("revoke", help="revoke a key by id (or by its unique name)")
    revoke.add_argument("key", help="key id (from `hedge keys list`) or name")
    revoke.add_argument("--config", dest="config_", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    settings = config.load(config.find_config(getattr(args, "config_", None) or args.config))
    store = KeyStore(settings.keys_path)
    try:
        if args.keys_command == "create":
            return _create(args, settings, store)
        if args.keys_command == "list":
            return _list(args, store)
        record = store.revoke(args.key)
    except KeyStoreError as e:
        print(f"hedge: {e}", file=sys.stderr)
        return 1
    print(
        f"revoked {record.id} ({record.name}); servers stop accepting it within "
        f"{settings.config.keys.refresh_s:g} s"
    )
    return 0


def _create(args: argparse.Namespace, settings: config.Settings, store: KeyStore) -> int:
    cfg = settings.config
    for flag, names, known in (
        ("--policy", args.policy, cfg.policies),
        ("--route", args.route, cfg.routes),
    ):
        unknown = [n for n in names if n not in known]
        if unknown:
            print(
                f"hedge: {flag} {', '.join(unknown)}: not defined in {settings.source} "
                f"(known: {', '.join(sorted(known)) or 'none'}).",
                file=sys.stderr,
            )
            return 2
    plaintext, record = store.create(
        args.name,
        policies=args.policy,
        routes=args.route,
        budget_usd=args.budget,
        period=args.period,
        rpm=args.rpm,
        tpm=args.tpm,
        max_body_bytes=args.max_body_bytes,
        max_messages=args.max_messages,
        max_tokens=args.max_tokens,
    )
    print(plaintext)
    print(
        f"created key {record.id} ({record.name}) in {store.path}. The key above is shown "
        "once: hedge keeps only a salted hash of it.",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, store: KeyStore) -> int:
    rows: list[dict[str, Any]] = [r.public() for r in store.all()]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print(f"no keys in {store.path}")
        return 0
    for r in rows:
        state = "active" if r["revoked"] is None else "revoked " + _when(r["revoked"])
        limits = ", ".join(
            f"{k}={r[k]}"
            for k in ("budget_usd", "rpm", "tpm", "max_body_bytes", "max_messages", "max_tokens")
            if r[k] is not None
        )
        if r["budget_usd"] is not None:
            limits += f" per {r['period']}"
        extra = [
            f"policies={','.join(r['policies'])}" if r["policies"] else "",
            f"routes={','.join(r['routes'])}" if r["routes"] else "",
            limits,
        ]
        print(f"{r['id']}  {r['name']}  {state}  {'  '.join(x for x in extra if x)}".rstrip())
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
