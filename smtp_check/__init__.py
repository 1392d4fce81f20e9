"""smtp_check."""
