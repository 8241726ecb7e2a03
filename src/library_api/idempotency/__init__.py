"""Idempotency keys: a retried creating request gets the first answer instead of creating twice."""
