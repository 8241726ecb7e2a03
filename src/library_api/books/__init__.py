"""The catalogue: books with validated ISBNs, search, filters, covers, and copies available now."""
