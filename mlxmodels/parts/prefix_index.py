"""Which pool blocks hold which token prefixes, for prefix caching in `BlockPool`.

A full block is keyed by a digest of (the key of the block before it, its own tokens), so a key names the whole
token prefix up to the end of that block, as in vLLM's automatic prefix caching. Keys are content addresses:
a block whose parent was evicted keeps a valid key (a later sequence reaching it must first match the parent's
content again). SHA-256 rather than Python's `hash`, so two prompts cannot be made to collide and share KV.

Keyed blocks that no sequence holds stay *cached*: they count as free, and the least recently released one is
reused first when the pool needs a block.
"""

import hashlib
from array import array
from collections import OrderedDict
from typing import Dict, Iterator, Optional, Sequence

ROOT = b""  # the parent key of a sequence's first block


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a full block holding `tokens` after the prefix keyed `parent`."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


def prefix_keys(tokens: Sequence[int], block_size: int) -> Iterator[bytes]:
    """The keys of the full blocks of `tokens`, in order, computed as they are asked for."""
    parent = ROOT
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_key(parent, tokens[start:start + block_size])
        yield parent


class PrefixIndex:
    def __init__(self):
        self._block: Dict[bytes, int] = {}  # key -> block
        self._key: Dict[int, bytes] = {}  # block -> key
        self._idle: "OrderedDict[int, None]" = OrderedDict()  # keyed blocks no sequence holds, oldest first

    @property
    def cached(self) -> int:
        return len(self._idle)

    def lookup(self, key: bytes) -> Optional[int]:
        return self._block.get(key)

    def keyed(self, block: int) -> bool:
        return block in self._key

    def add(self, key: bytes, block: int) -> None:
        """Key `block`, unless the key already names another block (the same prefix computed twice: the first
        one stays the cached copy) or the block has a key already."""
        if key not in self._block and block not in self._key:
            self._block[key], self._key[block] = block, key

    def drop(self, block: int) -> None:
        """Forget the block's key: its contents are about to change."""
        key = self._key.pop(block, None)
        if key is not None:
            del self._block[key]
        self._idle.pop(block, None)

    def park(self, block: int) -> None:
        """The last sequence holding this keyed block let it go: keep it, most recently used."""
        self._idle[block] = None

    def unpark(self, block: int) -> None:
        """A sequence claimed this cached block."""
        self._idle.pop(block, None)

    def evict(self) -> int:
        """The least recently released cached block, keyless, for reuse (the caller checks `cached` first)."""
        block = next(iter(self._idle))
        self.drop(block)
        return block
