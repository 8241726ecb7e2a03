"""Copies held: the ``bookings`` table and the arithmetic of its periods, below the catalogue and the bookings.

The catalogue (:mod:`library_api.books`) counts the copies active bookings hold to say what is available and to
refuse fewer copies than are held; the bookings workflow (:mod:`library_api.bookings`) creates and ends those
holdings, and locks the book it books. Both read the same table and the same rule (never more holdings at one
instant than copies), so both live here, and the dependency between the two domains runs one way: bookings on
books.
"""
