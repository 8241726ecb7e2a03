"""Bookings of book copies for a period, never more at any instant than the book has copies."""
