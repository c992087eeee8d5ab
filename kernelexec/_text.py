"""Text measured and cut in UTF-8 bytes, the unit of ``max_output_bytes``."""

from __future__ import annotations

from collections import deque


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Pieces:
    """Stream text kept as the pieces it arrived in: appending a piece and dropping bytes from the
    front each cost what they add or drop, never a copy of the whole text."""

    def __init__(self) -> None:
        self._pieces: deque[str] = deque()
        self._sizes: deque[int] = deque()  # UTF-8 bytes of each piece, from _start for the first
        self._start = 0  # characters of the first piece already dropped

    def append(self, text: str, size: int) -> None:
        self._pieces.append(text)
        self._sizes.append(size)

    def drop_front(self, excess: int) -> int:
        """Drop the shortest prefix of whole characters of at least ``excess`` bytes; its size."""
        dropped = 0
        while self._pieces and self._sizes[0] <= excess - dropped:
            dropped += self._sizes.popleft()
            self._pieces.popleft()
            self._start = 0
        if self._pieces and dropped < excess:
            need = excess - dropped
            chars, cut = _prefix_of_at_least(self._pieces[0], self._start, self._sizes[0], need)
            self._start += chars
            self._sizes[0] -= cut
            dropped += cut
            if not self._sizes[0]:
                self._pieces.popleft()
                self._sizes.popleft()
                self._start = 0
        return dropped

    def text(self) -> str:
        if self._start:
            self._pieces[0] = self._pieces[0][self._start :]
            self._start = 0
        return "".join(self._pieces)


def cut_to_size(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    if max_bytes <= 0:
        return ""
    if text.isascii():
        return text[:max_bytes]
    encoded = text.encode("utf-8", "surrogatepass")[:max_bytes]
    return encoded.decode("utf-8", "ignore")


def _prefix_of_at_least(text: str, start: int, size: int, min_bytes: int) -> tuple[int, int]:
    """Characters and UTF-8 bytes of the shortest prefix of ``text[start:]`` (``size`` bytes) of
    at least ``min_bytes`` bytes; the cost is that of the prefix, not of the text."""
    if size == len(text) - start:  # ASCII: a byte per character
        return min_bytes, min_bytes
    encoded = text[start : start + min_bytes].encode("utf-8", "surrogatepass")  # >= min_bytes
    end = min_bytes
    while end < len(encoded) and encoded[end] & 0xC0 == 0x80:  # finish the character cut in two
        end += 1
    return len(encoded[:end].decode("utf-8", "surrogatepass")), end
