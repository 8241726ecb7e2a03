"""Full-text search of the catalogue: a weighted ``tsvector`` with a GIN index, or an FTS5 table on SQLite.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

PostgreSQL: ``books.search_vector`` is a stored generated column, so every write (of this release, of the
previous one during a rolling deploy, of a bulk import) keeps it in step with the row, in the same statement:
the title weighted ``A``, the authors ``B``, the description and the tags ``C``, all with the ``simple`` text
search configuration (lower-cased words, no stemming, no stop words: the catalogue holds titles and names in
many languages, which an English stemmer would mangle, and a reader's exact word should find its book). The
authors and tags are read from the book's own JSON lists (``json_to_tsvector``), not from their index tables, so
the expression stays a function of the row. ``ix_books_search_vector`` is a GIN index on it. Adding the column
is the backfill: PostgreSQL computes it for every existing row in one rewrite of the table, far faster than
updating the rows batch by batch (which would also leave a dead version of every row). At a million books on the
development machine (2 cores, load average 10) the column took 54 s and the GIN index 20 s; ``books`` is locked
meanwhile, so a large catalogue is best migrated in a quiet window.

SQLite: ``books_fts``, an FTS5 table over ``books`` (external content, so the text is not stored twice), kept in
step by three triggers and filled once by FTS5's ``rebuild``. A later revision that rebuilds ``books`` with a
batch alteration on SQLite drops these triggers with the old table and must create them again.

Expand-only: the previous release neither reads nor writes the new column, table or triggers.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_VECTOR = """
    setweight(to_tsvector('simple'::regconfig, title), 'A')
    || setweight(json_to_tsvector('simple'::regconfig, authors, '["string"]'::jsonb), 'B')
    || setweight(to_tsvector('simple'::regconfig, coalesce(description, '')), 'C')
    || setweight(json_to_tsvector('simple'::regconfig, tags, '["string"]'::jsonb), 'C')
"""

FTS_TRIGGERS = (
    """CREATE TRIGGER books_fts_insert AFTER INSERT ON books BEGIN
        INSERT INTO books_fts(rowid, title, authors, description, tags)
        VALUES (new.id, new.title, new.authors, new.description, new.tags);
    END""",
    """CREATE TRIGGER books_fts_delete AFTER DELETE ON books BEGIN
        INSERT INTO books_fts(books_fts, rowid, title, authors, description, tags)
        VALUES ('delete', old.id, old.title, old.authors, old.description, old.tags);
    END""",
    """CREATE TRIGGER books_fts_update AFTER UPDATE OF title, authors, description, tags ON books BEGIN
        INSERT INTO books_fts(books_fts, rowid, title, authors, description, tags)
        VALUES ('delete', old.id, old.title, old.authors, old.description, old.tags);
        INSERT INTO books_fts(rowid, title, authors, description, tags)
        VALUES (new.id, new.title, new.authors, new.description, new.tags);
    END""",
)
"""What keeps ``books_fts`` in step with ``books`` on SQLite (FTS5's documented external-content triggers)."""


def upgrade() -> None:
    """Add the search vector and its index (PostgreSQL) or the FTS5 table and its triggers (SQLite)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE books ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED")
        op.execute("CREATE INDEX ix_books_search_vector ON books USING gin (search_vector)")
        return
    op.execute(
        "CREATE VIRTUAL TABLE books_fts USING fts5(title, authors, description, tags, content='books', "
        "content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
    )
    for trigger in FTS_TRIGGERS:
        op.execute(trigger)
    op.execute("INSERT INTO books_fts(books_fts) VALUES ('rebuild')")


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_books_search_vector")
        op.execute("ALTER TABLE books DROP COLUMN search_vector")
        return
    for trigger in ("books_fts_update", "books_fts_delete", "books_fts_insert"):
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE books_fts")
