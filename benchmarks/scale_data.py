"""A deterministic catalogue of any size, written by PostgreSQL itself (``generate_series``), for scale work.

    populate(connection, books=1_000_000, seed=1)

Every value is a function of the row number and the seed (PostgreSQL's ``hashint4`` of them, never
``random()``), so two builds with the same arguments on the same PostgreSQL major version hold the same rows;
words, names and tags are drawn independently, so that no title word predicts another; booking periods are
placed relative to the build's ``now()`` so that some copies are in use whenever the figures are taken. Per
book: one author (``book_authors``), one to three tags (``book_tags``), a year (unknown for one in fifty), one
to three copies, and two bookings: one returned in the past and one active (two in three) or cancelled, whose
period is around now. Users: one per thousand books (at least ten), who hold the bookings in turn.

The secondary indexes are dropped during the load and re-created from their own definitions afterwards (much
faster than maintaining them row by row), then the tables are analysed and vacuumed so that the planner has
statistics and index-only scans see an up-to-date visibility map.

Used by ``benchmarks/bench_scale.py`` and by the plan test (``tests/books/test_list_plans.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

WORDS = [
    "history",
    "river",
    "night",
    "garden",
    "winter",
    "empire",
    "silent",
    "glass",
    "machine",
    "ocean",
    "shadow",
    "letters",
    "city",
    "storm",
    "mountain",
    "memory",
    "fire",
    "island",
    "science",
    "journey",
    "kingdom",
    "stone",
    "light",
    "paper",
    "orchard",
    "valley",
    "harbour",
    "music",
    "engine",
    "forest",
    "secret",
    "war",
    "peace",
    "language",
    "crown",
    "market",
    "bridge",
    "summer",
    "tower",
    "dream",
    "north",
    "travel",
    "house",
    "number",
    "song",
    "road",
]
"""Title words; ``history`` is among them so that ``q=history`` matches a share of any catalogue."""

FIRST_NAMES = [
    "Anna",
    "Boris",
    "Clara",
    "David",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Leon",
    "Maria",
    "Nikolai",
    "Olga",
    "Pavel",
]
LAST_NAMES = [
    "Adler",
    "Brandt",
    "Costa",
    "Duarte",
    "Eriksen",
    "Fischer",
    "Galli",
    "Horvat",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindqvist",
]
TAGS = [
    "fiction",
    "history",
    "science",
    "poetry",
    "travel",
    "drama",
    "biography",
    "philosophy",
    "art",
    "children",
    "mystery",
    "classics",
]


class Executor(Protocol):
    """What :func:`populate` needs from a connection: asyncpg's ``execute`` and ``fetch``."""

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement."""

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """Run a query and return its rows."""


def _array(values: tuple[str, ...] | list[str]) -> str:
    return "ARRAY[" + ",".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


async def populate(connection: Executor, books: int, seed: int = 1) -> None:
    """Fill an empty, migrated database with ``books`` books, their index rows, users and two bookings each."""
    users = max(10, books // 1000)
    indexes = await connection.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename IN ('books', 'book_authors', 'book_tags', 'bookings', 'users') "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    )
    for row in indexes:
        await connection.execute(f'DROP INDEX "{row["indexname"]}"')
    await connection.execute(
        """
        INSERT INTO users (email, password_hash, full_name, role, is_active, token_version, created_at, updated_at)
        SELECT 'reader' || u || '@scale.example', 'not-a-password-hash', 'Reader ' || u, 'reader', true, 0,
               now(), now()
        FROM generate_series(1, $1::int) AS u
        """,
        users,
    )
    words, first, last, tags = _array(WORDS), _array(FIRST_NAMES), _array(LAST_NAMES), _array(TAGS)
    await connection.execute("BEGIN")
    try:
        await connection.execute(
            f"""
            CREATE TEMP TABLE scale_books ON COMMIT DROP AS
            SELECT i,
                   initcap(w[1 + abs(hashint4(i * 8 + 1 + $2 * 7919)::bigint) % cardinality(w)] || ' '
                           || w[1 + abs(hashint4(i * 8 + 2 + $2 * 7919)::bigint) % cardinality(w)] || ' '
                           || w[1 + abs(hashint4(i * 8 + 3 + $2 * 7919)::bigint) % cardinality(w)]) || ' ' || i
                       AS title,
                   f[1 + abs(hashint4(i * 8 + 4 + $2 * 7919)::bigint) % cardinality(f)] || ' '
                       || l[1 + abs(hashint4(i * 8 + 5 + $2 * 7919)::bigint) % cardinality(l)] AS author,
                   t[1 + abs(hashint4(i * 8 + 6 + $2 * 7919)::bigint) % cardinality(t)] AS tag1,
                   CASE WHEN i % 3 = 0 THEN t[1 + abs(hashint4(i * 8 + 7 + $2 * 7919)::bigint) % cardinality(t)] END
                       AS tag2,
                   CASE WHEN i % 50 = 0 THEN NULL ELSE 1900 + (i * 37 + $2) % 125 END AS year,
                   1 + i % 3 AS copies,
                   '978' || lpad(i::text, 9, '0') AS stem
            FROM generate_series(1, $1::int) AS i,
                 (SELECT {words} AS w, {first} AS f, {last} AS l, {tags} AS t) AS lists
            """,
            books,
            seed,
        )
        await connection.execute(
            """
            INSERT INTO books (id, isbn, title, authors, tags, year, description, copies, search_text,
                               created_at, updated_at)
            SELECT i,
                   stem || ((10 - (SELECT sum(substr(stem, k, 1)::int * CASE WHEN k % 2 = 1 THEN 1 ELSE 3 END)
                                   FROM generate_series(1, 12) AS k) % 10) % 10)::text,
                   title,
                   json_build_array(author),
                   CASE WHEN tag2 IS NULL OR tag2 = tag1 THEN json_build_array(tag1)
                        ELSE json_build_array(tag1, tag2) END,
                   year, NULL, copies, lower(title || ' | ' || author),
                   timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                   timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
            FROM scale_books
            """
        )
        await connection.execute(
            "INSERT INTO book_authors (book_id, position, name_key, title) "
            "SELECT i, 0, lower(author), title FROM scale_books"
        )
        await connection.execute(
            "INSERT INTO book_tags (book_id, tag) SELECT i, tag1 FROM scale_books "
            "UNION ALL SELECT i, tag2 FROM scale_books WHERE tag2 IS NOT NULL AND tag2 <> tag1"
        )
        await connection.execute(
            """
            INSERT INTO bookings (book_id, user_id, start_at, end_at, status, closed_at, created_at, updated_at)
            SELECT i, 1 + i % $1::int, now() - interval '60 days', now() - interval '50 days', 'returned',
                   now() - interval '50 days', now() - interval '61 days', now() - interval '50 days'
            FROM scale_books
            UNION ALL
            SELECT i, 1 + (i * 7) % $1::int,
                   now() + ((i % 9) - 4) * interval '1 day', now() + ((i % 9) - 4 + 5) * interval '1 day',
                   CASE WHEN i % 3 = 1 THEN 'cancelled' ELSE 'active' END,
                   CASE WHEN i % 3 = 1 THEN now() END, now() - interval '5 days', now() - interval '5 days'
            FROM scale_books
            """,
            users,
        )
        await connection.execute("SELECT setval(pg_get_serial_sequence('books', 'id'), $1::int)", books)
        await connection.execute("COMMIT")
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    for row in indexes:
        await connection.execute(row["indexdef"])
    await connection.execute("VACUUM ANALYZE")
