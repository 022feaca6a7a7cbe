"""``oms token``: mint a bearer token for local use of the REST and gRPC APIs, and keep the signing keys.

./oms token --sub alice --accounts ACC-001,ACC-002 --scopes orders:read,orders:write --ttl 3600
./oms token keys list            # kids and ages of the keys in OMS_JWT_KEYS_FILE (never the secrets)
./oms token keys rotate          # add a key: it signs from now on, the older ones keep verifying
./oms token keys remove KID      # retire a key: tokens it signed are refused from then on
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from common.settings import ApiSettings, load_settings
from services.api.auth import (
    LEGACY_KID,
    SCOPE_READ,
    SCOPE_WRITE,
    SCOPES,
    KeySetError,
    KeySetFile,
    TokenService,
)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _age(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def keys(argv: list[str], api: ApiSettings | None = None) -> int:
    """``oms token keys list | rotate | remove KID``: the key set of ``OMS_JWT_KEYS_FILE``."""
    parser = argparse.ArgumentParser(prog="oms token keys", description="the token signing keys (key set)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="kids and ages of the keys, newest (signing) marked; never the secrets")
    actions.add_parser("rotate", help="add a key that signs from now on; older keys keep verifying")
    remove = actions.add_parser("remove", help="retire a key: tokens it signed are refused from then on")
    remove.add_argument("kid")
    args = parser.parse_args(argv)
    api = api or load_settings().api
    store = KeySetFile(api.jwt_keys_file)
    try:
        if args.action == "rotate":
            key = store.rotate()
            # The kid alone on stdout, for scripts (KID=$(./oms token keys rotate)); the explanation on stderr.
            print(key.kid)
            print(f"added key {key.kid} to {store.path}: it signs new tokens from now on", file=sys.stderr)
        elif args.action == "remove":
            if args.kid == LEGACY_KID:
                print(
                    f"{LEGACY_KID!r} is the legacy secret, not in the key set: set OMS_JWT_ACCEPT_LEGACY=false"
                    " to retire it",
                    file=sys.stderr,
                )
                return 1
            store.remove(args.kid)
            print(f"removed key {args.kid}; tokens it signed are refused from now on")
        else:
            current = store.read()
            now = datetime.now(UTC)
            newest = current.newest
            print(f"{'KID':<28} {'AGE':>6}  CREATED")
            for key in current.keys:
                mark = "  (signs)" if newest is not None and key.kid == newest.kid else ""
                print(f"{key.kid:<28} {_age(now - key.created):>6}  {key.created.isoformat()}{mark}")
            if api.jwt_accept_legacy:
                mark = "  (signs)" if newest is None else ""
                print(f"{LEGACY_KID:<28} {'-':>6}  legacy secret (OMS_JWT_SECRET / OMS_JWT_SECRET_FILE){mark}")
    except KeySetError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Print a signed token for the given subject, accounts and scopes (or run ``keys ...``)."""
    if argv and argv[0] == "keys":
        return keys(argv[1:])
    parser = argparse.ArgumentParser(
        prog="oms token",
        description="issue an API token (JWT) signed with the newest key; `oms token keys --help` for the keys",
    )
    parser.add_argument("--sub", default="local-user", help="the user the token names (default: local-user)")
    parser.add_argument(
        "--accounts", default="*", type=_csv, help="comma-separated account ids, or * for every account"
    )
    parser.add_argument(
        "--scopes",
        default=f"{SCOPE_READ},{SCOPE_WRITE}",
        type=_csv,
        help=f"comma-separated scopes out of {', '.join(SCOPES)} (default: {SCOPE_READ},{SCOPE_WRITE})",
    )
    parser.add_argument("--ttl", default=3600, type=int, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    if not args.accounts:
        parser.error("--accounts needs at least one account id (or *)")
    unknown = set(args.scopes) - set(SCOPES)
    if unknown:
        parser.error(f"unknown scope(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCOPES)}")
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        tokens = TokenService.from_settings(load_settings().api)
        print(tokens.issue(args.sub, args.accounts, args.scopes, ttl=timedelta(seconds=args.ttl)))
    except KeySetError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
