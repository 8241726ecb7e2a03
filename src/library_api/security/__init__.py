"""Who is calling and what they may do: principals, credentials, permissions, passwords and tokens."""
