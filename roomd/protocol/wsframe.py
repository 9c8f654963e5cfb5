"""Server-to-client WebSocket frames for the broadcast fast path (sans-IO).

A broadcast is encoded once into the bytes of complete WebSocket frames and
those bytes are written to every target socket, bypassing the per-connection
WebSocket library's encoder. Frames built here are what RFC 6455 requires of
a server: FIN set, no mask, opcode 1 (text) or 2 (binary), and the payload
length in 7, 16 or 64 bits. No extensions (no permessage-deflate), so this
path is only valid on connections that negotiated none.

Errors: ``encode_text_frame`` raises UnicodeEncodeError for a str that is not
encodable as UTF-8 (lone surrogates); a bytes payload is trusted to be valid
UTF-8. Anything that is neither str nor bytes-like raises TypeError.
"""

from __future__ import annotations

import struct

__all__ = ["encode_text_frame", "encode_binary_frame", "encode_frames", "frame_header"]

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_pack16 = struct.Struct("!BBH").pack
_pack64 = struct.Struct("!BBQ").pack


def frame_header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 0x10000:
        return _pack16(first, 126, length)
    return _pack64(first, 127, length)


def encode_text_frame(payload: str | bytes) -> bytes:
    """One unmasked text frame (opcode 1, FIN) holding payload as UTF-8.

    A str is encoded to UTF-8 (UnicodeEncodeError on lone surrogates); bytes
    are used as they are and must already be UTF-8.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return frame_header(_FIN_TEXT, len(payload)) + payload


def encode_binary_frame(payload: bytes) -> bytes:
    """One unmasked binary frame (opcode 2, FIN) holding payload."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    return frame_header(_FIN_BINARY, len(payload)) + payload


def encode_frames(parts: list[str | bytes]) -> bytes:
    """The frames of one Engine.IO message list, concatenated.

    Each str becomes a text frame of its UTF-8 and each bytes-like a binary
    frame (as the output of ``sio.encode`` prefixed by ``_eio``), joined in
    one pass. Errors as in :func:`encode_text_frame`.
    """
    chunks: list[bytes] = []
    append = chunks.append
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8")
            first = _FIN_TEXT
        else:
            if type(part) is not bytes:
                part = bytes(part)
            first = _FIN_BINARY
        append(frame_header(first, len(part)))
        append(part)
    return b"".join(chunks)
