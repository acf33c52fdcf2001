"""asyncio endpoints that move SIP bytes: UDP datagrams and TCP streams (Content-Length framed).

They know addresses and bytes, never SIP semantics beyond stream framing.
"""
