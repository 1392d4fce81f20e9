"""The shared configuration library: everything read from the config dir (and domaininfo).

chasquid.conf (config), the config and data dir paths (layout), the users
databases (userdb, passwords, legacy_userdb), the aliases files and their
resolver (aliases), the local domains snapshot (domains) and the per-domain
TLS levels (domaininfo). The daemon and every tool import it; it imports only
chasquid's basic modules and chasquid.programs (the alias-resolve hook).
"""
