"""SMTP reception: listeners' sessions, TLS/SNI, AUTH, SPF, DATA, added headers, hooks."""
