"""``oms token``: mint a bearer token for local use of the REST and gRPC APIs.

./oms token --sub alice --accounts ACC-001,ACC-002 --scopes orders:read,orders:write --ttl 3600
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from common.config import load_settings
from services.api.auth import SCOPE_READ, SCOPE_WRITE, SCOPES, TokenService


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def main(argv: list[str]) -> int:
    """Print a signed token for the given subject, accounts and scopes."""
    parser = argparse.ArgumentParser(prog="oms token", description="issue an API token (JWT)")
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
    tokens = TokenService.from_settings(load_settings())
    print(tokens.issue(args.sub, args.accounts, args.scopes, ttl=timedelta(seconds=args.ttl)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
