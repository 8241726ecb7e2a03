"""What the query-string guard of every API route costs as a query grows: linear, and bounded by the limit.

    .venv/bin/python -m benchmarks.bench_query_guard [--rounds 5]

The guard (``library_api.http.query.single_valued_query``) runs in process on a request for the catalogue list
whose query holds ``n`` parameters, all distinct but ``q`` given twice (the worst case of the old check), with
``MAX_QUERY_PARAMETERS`` raised to 10,000 so that every query is checked in full (parsing and the duplicate
check). The cost per parameter stays flat as ``n`` doubles,
which is what a linear check looks like; the quadratic check it replaced (``names.count`` per name, kept below
as the yardstick) grows with ``n``. Last, the 64 KiB attack query against the default limit of 100: refused
from the raw bytes, before anything is parsed. The median of ``--rounds`` rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request

from library_api.books.router import router as books_router
from library_api.config import Settings
from library_api.http.query import single_valued_names, single_valued_query
from library_api.problems import ProblemError

SIZES = (1000, 2000, 4000, 8000)


def _route() -> APIRoute:
    return next(r for r in books_router.routes if isinstance(r, APIRoute) and r.name == "list_books")


def _request(query: bytes, limit: int) -> Request:
    context = SimpleNamespace(settings=Settings(max_query_parameters=limit))
    app = SimpleNamespace(state=SimpleNamespace(context=context))
    scope: dict[str, Any] = {"type": "http", "query_string": query, "headers": [], "app": app, "route": _route()}
    return Request(scope)


def quadratic_check(request: Request) -> None:
    """The duplicate check as it was before (``names.count`` for every name): the yardstick."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1} & single_valued_names(_route()))
    assert repeated


def guard(request: Request) -> None:
    """The guard itself, driven by hand (it awaits nothing), refusing the query as expected."""
    coroutine = single_valued_query(request)
    try:
        coroutine.send(None)
    except ProblemError:
        return
    except StopIteration:
        pass
    raise AssertionError("the query should have been refused")


def _seconds(run: Any, query: bytes, limit: int, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        request = _request(query, limit)  # a fresh request: the parsed parameters are cached on it
        started = time.perf_counter()
        run(request)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _query(size: int) -> bytes:
    return b"&".join([f"p{number}=1".encode() for number in range(size - 2)] + [b"q=a", b"q=b"])


def main() -> None:
    """Print the cost of the guard and of the yardstick per query size, then of the refused attack query."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    print(f"{'parameters':>10} {'guard ms':>10} {'us/param':>9} {'quadratic ms':>13} {'us/param':>9}")
    for size in SIZES:
        query = _query(size)
        linear = _seconds(guard, query, 10_000, rounds)
        quadratic = _seconds(quadratic_check, query, 10_000, rounds)
        print(
            f"{size:>10} {linear * 1e3:>10.2f} {linear / size * 1e6:>9.2f} "
            f"{quadratic * 1e3:>13.2f} {quadratic / size * 1e6:>9.2f}"
        )
    attack = b"&".join([b"q=a"] * 16_000)
    refused = _seconds(guard, attack, 100, rounds)
    print(
        f"64 KiB query ({len(attack)} bytes, 16,000 parameters) at the default limit: refused in {refused * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
