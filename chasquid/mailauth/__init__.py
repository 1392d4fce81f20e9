"""Message authentication shared by the daemon and chasquid-util: DKIM and Authentication-Results.

dkimpy does the DKIM protocol (tag lists, header selection and hashing, RSA
and Ed25519); this package feeds it, computes body hashes in bounded chunks
(`message.py`), looks keys up through the project's asyncio resolver
(`dkimverify.py`), and builds or cleans the `Authentication-Results:` header
(`authres.py`). Messages are passed with LF line endings, the form the
daemon stores; DKIM's CRLF forms are made here.
"""
