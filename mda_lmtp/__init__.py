"""mda_lmtp."""
