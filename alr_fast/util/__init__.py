"""Small helpers every layer may use: dtype names (``dtypes``) and whole-or-absent file writes (``atomic``)."""
