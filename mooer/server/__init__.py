"""Network protocols over the session engine: websockets and HTTP."""
