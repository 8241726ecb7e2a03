"""User accounts: registration, profiles and role management by administrators."""
