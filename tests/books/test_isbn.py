"""ISBN checksums and normalisation."""

from __future__ import annotations

import pytest

from library_api.books.isbn import InvalidISBN, isbn13_check_digit, normalize_isbn


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0-306-40615-2", "9780306406157"),
        ("978-0-306-40615-7", "9780306406157"),
        ("080442957X", "9780804429573"),
        ("080442957x", "9780804429573"),
        ("979 10 90636 07 1", "9791090636071"),
    ],
)
def test_valid_isbns_normalise_to_isbn13(raw: str, expected: str) -> None:
    assert normalize_isbn(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0-306-40615-3", "ISBN-10 checksum"),
        ("978-0-306-40615-8", "ISBN-13 checksum"),
        ("X306406152", "nine digits"),
        ("97803064061X7", "thirteen digits"),
        ("1234567890123", "starts with 978 or 979"),
        ("12345", "10 or 13 digits"),
    ],
)
def test_invalid_isbns_say_why(raw: str, reason: str) -> None:
    with pytest.raises(InvalidISBN, match=reason):
        normalize_isbn(raw)


def test_check_digit_completes_twelve_digits() -> None:
    assert isbn13_check_digit("978030640615") == "7"
    assert isbn13_check_digit("979109063607") == "1"
