"""Authentication of users: password login, access JWTs, rotating refresh tokens, logout."""
