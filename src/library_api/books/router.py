"""``/books``: the catalogue.

Reads are open to anyone the role table lets read (anonymous by default); changes need ``books:write``. Reads
go through the catalogue cache (:mod:`library_api.books.catalogue_cache`) and answer with an ``ETag``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Header, Path, Query, Request, UploadFile, status
from fastapi.responses import FileResponse
from starlette.responses import Response

from library_api.books.covers import detect_image
from library_api.books.paging import CURSOR_MAX_LENGTH, check_window, link_header, next_cursor_in
from library_api.books.repository import BookFilters, Window
from library_api.books.schemas import BookCreate, BookOut, BookPage, BookSort, BookUpdate
from library_api.dependencies import ContextDep, ReadSessionDep, SessionDep
from library_api.dependencies.permissions import require
from library_api.http.conditional import conditional_response
from library_api.http.fast_path import FastPathRoute, fast_path
from library_api.http.links import Link
from library_api.problems import ContentTooLarge, NotFound, UnsupportedMediaType
from library_api.problems.responses import problems
from library_api.security.permissions import Permission

router = APIRouter(prefix="/books", tags=["books"], route_class=FastPathRoute)

BookId = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_MODIFIED = {"description": "The client's copy (its `If-None-Match`) is current"}
IfNoneMatch = Annotated[str | None, Header(description="An ETag from an earlier answer; a match gives 304")]
Reader = require(Permission.BOOKS_READ)
Librarian = require(Permission.BOOKS_WRITE)
_CHUNK = 64 * 1024

_NEW_BOOK = {"book_id": "$response.body#/id"}
LINKS = (
    Link("GetBook", ("POST", "/books"), 201, ("GET", "/books/{book_id}"), _NEW_BOOK),
    Link("UpdateBook", ("POST", "/books"), 201, ("PATCH", "/books/{book_id}"), _NEW_BOOK),
    Link("DeleteBook", ("POST", "/books"), 201, ("DELETE", "/books/{book_id}"), _NEW_BOOK),
    Link("PutCover", ("POST", "/books"), 201, ("PUT", "/books/{book_id}/cover"), _NEW_BOOK),
    Link("DeleteCover", ("POST", "/books"), 201, ("DELETE", "/books/{book_id}/cover"), _NEW_BOOK),
    Link("GetCover", ("PUT", "/books/{book_id}/cover"), 200, ("GET", "/books/{book_id}/cover"), _NEW_BOOK),
)
"""What follows the creation of a book (its details, changes, removal and cover upload) and of a cover (reading it).

A new book has no cover: reading one follows its upload, not the book's creation."""


LIST_OK = {
    "headers": {
        "Link": {
            "description": 'Where the next page is (`<URL>; rel="next"`), absent on the last page',
            "schema": {"type": "string"},
        }
    }
}
Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        description="Where the page starts: `next_cursor` of the previous page, with the same sort. A cursor "
        "this list did not hand out (or one made for another sort) is a 400 `invalid-cursor` problem; "
        "with a non-zero `offset`, a 400 `offset-with-cursor`.",
    ),
]
Offset = Annotated[
    int,
    Query(
        ge=0,
        le=1_000_000,
        description="Rows to skip, at most `MAX_LIST_OFFSET` (10,000 by default; deeper is a 400 "
        "`offset-too-deep` problem): follow `next_cursor` instead, whose pages cost the same at any depth.",
    ),
]

SEARCH_HELP = (
    "Words in the title, authors, description or tags, in web-search syntax: every word must appear, "
    '`"a phrase"` in that order, `-word` must not appear, `or` between words lets either do. A plain query '
    "also finds partial words and small typos in the title and authors, ranked after the full matches."
)
SORT_HELP = (
    "The order, ties broken by id: `relevance` (the default when `q` is given: best matches first) or a "
    "column, `-` for descending (`title` is the default without `q`)."
)


@router.get(
    "",
    dependencies=[Reader],
    response_model=BookPage,
    responses={200: LIST_OK, 304: NOT_MODIFIED, **problems(400, 401, 403, 422)},
    summary="Search the catalogue",
)
async def list_books(
    request: Request,
    ctx: ContextDep,
    q: Annotated[str | None, Query(min_length=1, max_length=200, description=SEARCH_HELP)] = None,
    author: Annotated[str | None, Query(min_length=1, max_length=300, description="An author's full name")] = None,
    tag: Annotated[list[str] | None, Query(max_length=10, description="Books carrying every tag given")] = None,
    year_from: Annotated[int | None, Query(ge=-3000, le=2100)] = None,
    year_to: Annotated[int | None, Query(ge=-3000, le=2100)] = None,
    available: Annotated[bool | None, Query(description="Only books with (or without) a copy free now")] = None,
    sort: Annotated[BookSort | None, Query(description=SORT_HELP)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Offset = 0,
    cursor: Cursor = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Books matching every filter given, one page at a time.

    ``total`` counts the matches up to ``LIST_TOTAL_CAP`` (1,000 by default): ``total_relation`` says whether it
    is exact (``eq``) or a lower bound (``gte``). ``next_cursor`` (and the ``Link`` header) lead to the next
    page; a page costs the same wherever it is and however large the catalogue.
    """
    check_window(offset, cursor, ctx.settings.max_list_offset)
    filters = BookFilters(
        q=q, author=author, tags=tuple(tag or ()), year_from=year_from, year_to=year_to, available=available
    )
    window = Window(limit=limit, offset=offset, cursor=cursor, total_cap=ctx.settings.list_total_cap)
    order = sort or (BookSort.RELEVANCE if q else BookSort.TITLE)
    answer = await ctx.catalogue.page(
        filters, BookSort.TITLE if order is BookSort.RELEVANCE and not q else order, window
    )
    response = conditional_response(answer.body, answer.etag, if_none_match)
    response.headers.update(link_header(request.url.path, request.url.query, next_cursor_in(answer.body)))
    return response


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Librarian],
    responses=problems(401, 403, 409, 422),
    summary="Add a book",
)
async def create_book(body: BookCreate, session: SessionDep, ctx: ContextDep) -> BookOut:
    """Add a book to the catalogue; the ISBN is checked and normalised to ISBN-13."""
    return await ctx.books.create(session, body)


@fast_path
@router.get(
    "/{book_id}",
    dependencies=[Reader],
    response_model=BookOut,
    responses={304: NOT_MODIFIED, **problems(401, 403, 404, 422)},
    summary="One book",
)
async def get_book(book_id: BookId, ctx: ContextDep, if_none_match: IfNoneMatch = None) -> Response:
    """A book with the number of its copies free right now; ``ETag`` and ``If-None-Match`` give 304s."""
    answer = await ctx.catalogue.book(book_id)
    if answer is None:
        raise NotFound(f"No book with id {book_id}.")
    return conditional_response(answer.body, answer.etag, if_none_match)


@router.patch(
    "/{book_id}", dependencies=[Librarian], responses=problems(401, 403, 404, 409, 422), summary="Change a book"
)
async def update_book(book_id: BookId, body: BookUpdate, session: SessionDep, ctx: ContextDep) -> BookOut:
    """Change only the fields sent; copies cannot drop below what future active bookings hold."""
    return await ctx.books.update(session, book_id, body)


@router.delete(
    "/{book_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Librarian],
    responses=problems(401, 403, 404, 409, 422),
    summary="Remove a book",
)
async def delete_book(book_id: BookId, session: SessionDep, ctx: ContextDep) -> None:
    """Remove a book with its booking history; refused while any booking of it is active."""
    await ctx.books.delete(session, book_id)


@router.get(
    "/{book_id}/cover",
    dependencies=[Reader],
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The cover image"},
        **problems(401, 403, 404, 422),
    },
    summary="A book's cover image",
)
async def get_cover(book_id: BookId, session: ReadSessionDep, ctx: ContextDep) -> FileResponse:
    """The stored cover, with the content type recognised at upload."""
    book = await ctx.books.get_model(session, book_id)
    if book.cover_file is None or book.cover_content_type is None:
        raise NotFound("This book has no cover image.")
    path = ctx.books.cover_path(book)
    if not path.is_file():
        raise NotFound("This book has no cover image.")
    return FileResponse(
        path,
        media_type=book.cover_content_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.put(
    "/{book_id}/cover",
    dependencies=[Librarian],
    responses=problems(401, 403, 404, 413, 415, 422, 507),
    summary="Upload a cover image",
)
async def put_cover(
    book_id: BookId,
    session: SessionDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="A JPEG or PNG image")],
) -> BookOut:
    """Store a JPEG or PNG cover, recognised by its content; the size limit is ``MAX_UPLOAD_SIZE``.

    A book that does not exist is a 404 before the upload is looked at, whatever the file. A full upload volume
    is a 507 ``insufficient-storage`` problem with ``Retry-After``; the previous cover stays as it was.
    """
    if await ctx.catalogue.book(book_id) is None:
        raise NotFound(f"No book with id {book_id}.")
    limit = ctx.settings.max_upload_size
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ContentTooLarge(f"The image is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    data = b"".join(chunks)
    kind = detect_image(data[:32])
    if kind is None or kind.extension not in ctx.settings.allowed_file_types:
        allowed = ", ".join(t for t in ctx.settings.allowed_file_types if t in {".jpg", ".jpeg", ".png"})
        raise UnsupportedMediaType(f"The file is not an image of an accepted type ({allowed}).")
    return await ctx.books.set_cover(session, book_id, data, kind)


@router.delete(
    "/{book_id}/cover",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Librarian],
    responses=problems(401, 403, 404, 422),
    summary="Remove a cover image",
)
async def delete_cover(book_id: BookId, session: SessionDep, ctx: ContextDep) -> None:
    """Delete the book's cover image."""
    await ctx.books.remove_cover(session, book_id)
