"""Shuffled reuse pool of chunks held by the broker.

Storage is preallocated once as ``(capacity, stems, window)`` in the wire dtype and never
grows. Each chunk is served up to ``reuse`` times, then its slot is freed for new chunks.
The first client that draws a chunk becomes its owner: later uses go to that client only,
so several clients (DDP ranks) always see disjoint chunks. Every operation is a handful of
vectorised numpy passes over the slot metadata; no Python loop runs over the whole pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth_server.protocol import STEM_DTYPES

NO_OWNER = -1


@dataclass(frozen=True)
class Draw:
    """Chunks picked for one batch: ``stems`` (k, stems, window), their ``meta``, pool ``slots``
    and the client's index ``cid`` (``ReusePool.pick`` / ``commit``)."""

    stems: np.ndarray
    meta: list[dict]
    slots: np.ndarray
    cid: int


class ReusePool:
    """Fixed-capacity chunk store with random draws, reuse counting and client ownership.

    ``add`` takes ``(n, stems, window)`` arrays already in ``dtype``; ``draw`` returns a
    contiguous ``(k, stems, window)`` copy. Batch indices used for freshness are counted per
    client (one ``draw`` that returns chunks = one batch of that client).
    """

    def __init__(self, capacity: int, stems: int, window: int, dtype: str, reuse: int,
                 rng: np.random.Generator):
        if capacity < 1 or stems < 1 or window < 1:
            raise ValueError(f"pool capacity/stems/window must be >= 1 ({capacity}, {stems}, {window})")
        if dtype not in STEM_DTYPES:
            raise ValueError(f"pool dtype {dtype!r} not one of {sorted(STEM_DTYPES)}")
        self.capacity, self.stems, self.window, self.dtype = capacity, stems, window, dtype
        self._rng = rng
        self.reuse = self._checked_reuse(reuse)
        self._data = np.empty((capacity, stems, window), dtype=STEM_DTYPES[dtype])
        self._filled = np.zeros(capacity, dtype=bool)
        self._uses = np.zeros(capacity, dtype=np.int64)
        self._owner = np.full(capacity, NO_OWNER, dtype=np.int32)
        self._last = np.full(capacity, -1, dtype=np.int64)    # owner's batch index at last use
        self._offset = np.zeros(capacity, dtype=np.int64)
        self._song = np.full(capacity, "", dtype=object)
        self._augment = np.full(capacity, None, dtype=object)   # a chunk's augmentation record, if any
        self._clients: dict[str, int] = {}
        self._client_batches: list[int] = []
        self.added = self.served = self.retired = 0
        self._first_uses = self._retired_uses = 0
        self._gap_sum = self._gap_count = 0

    @staticmethod
    def _checked_reuse(reuse: int) -> int:
        if int(reuse) != reuse or reuse < 1:
            raise ValueError(f"reuse must be an integer >= 1, not {reuse!r}")
        return int(reuse)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the preallocated storage and slot metadata."""
        meta = (self._filled, self._uses, self._owner, self._last, self._offset, self._song)
        return self._data.nbytes + sum(a.nbytes for a in meta)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._filled))

    def free(self) -> int:
        """Number of empty slots (how many chunks ``add`` will take now)."""
        return self.capacity - len(self)

    def available(self, client: str) -> int:
        """Number of stored chunks ``client`` may draw (unowned or owned by it)."""
        return int(np.count_nonzero(self._usable(self._client_index(client))))

    def add(self, stems_wire: np.ndarray, chunks: list[dict]) -> int:
        """Store up to ``free()`` chunks; returns how many were stored (the rest are refused).

        ``stems_wire``: ``(n, stems, window)`` in the pool dtype; ``chunks``: n dicts with
        ``song`` and ``offset``.
        """
        want = (self.stems, self.window)
        if stems_wire.ndim != 3 or stems_wire.shape[1:] != want:
            raise ValueError(f"chunk array shape {stems_wire.shape} != (n, {want[0]}, {want[1]})")
        if stems_wire.dtype != STEM_DTYPES[self.dtype]:
            raise ValueError(f"chunk dtype {stems_wire.dtype} != pool dtype {self.dtype}")
        if len(chunks) != stems_wire.shape[0]:
            raise ValueError(f"{len(chunks)} chunk entries for {stems_wire.shape[0]} arrays")
        slots = np.flatnonzero(~self._filled)[: stems_wire.shape[0]]
        k = slots.size
        if k == 0:
            return 0
        self._data[slots] = stems_wire[:k]
        self._song[slots] = [meta["song"] for meta in chunks[:k]]
        self._offset[slots] = [meta["offset"] for meta in chunks[:k]]
        self._augment[slots] = [meta.get("augment") for meta in chunks[:k]]
        self._uses[slots] = 0
        self._owner[slots] = NO_OWNER
        self._last[slots] = -1
        self._filled[slots] = True
        self.added += k
        return k

    def draw(self, n: int, client: str) -> tuple[np.ndarray, list[dict]]:
        """``pick`` then ``commit``: up to n chunks for ``client``, their use recorded at once."""
        drawn = self.pick(n, client)
        self.commit(drawn)
        return drawn.stems, drawn.meta

    def pick(self, n: int, client: str) -> Draw:
        """Up to n distinct chunks chosen uniformly among those ``client`` may use, nothing recorded
        yet: the broker ``commit``s the draw once the batch is sent, so a batch that could not be
        sent neither counts a use nor retires fresh chunks.

        ``stems``: ``(k, stems, window)`` contiguous copy, k <= n (0 when nothing is available);
        ``meta``: ``[{"song", "offset", "uses"[, "augment"]}]``, ``uses`` counting this use (1 = first).
        """
        cid = self._client_index(client)
        usable = np.flatnonzero(self._usable(cid))
        k = min(int(n), usable.size)
        if k <= 0:
            return Draw(np.empty((0, self.stems, self.window), dtype=self._data.dtype), [], usable[:0], cid)
        slots = self._rng.choice(usable, size=k, replace=False, shuffle=True)
        uses = self._uses[slots] + 1
        meta = [{"song": song, "offset": int(offset), "uses": int(u), **({"augment": aug} if aug is not None else {})}
                for song, offset, u, aug in zip(self._song[slots], self._offset[slots], uses, self._augment[slots])]
        return Draw(self._data[slots], meta, slots, cid)

    def commit(self, drawn: Draw) -> None:
        """Record the uses of a ``pick`` (no other pool call in between); chunks that reach
        ``reuse`` uses are retired. A draw of nothing is no batch."""
        if drawn.slots.size == 0:
            return
        batch_index = self._client_batches[drawn.cid]
        self._client_batches[drawn.cid] += 1
        self._record_use(drawn.slots, drawn.cid, batch_index)
        self._retire(drawn.slots[self._uses[drawn.slots] >= self.reuse])

    def set_reuse(self, reuse: int) -> int:
        """Change the reuse limit live; chunks already used ``>= reuse`` times are freed.

        Returns the number of chunks freed.
        """
        self.reuse = self._checked_reuse(reuse)
        spent = np.flatnonzero(self._filled & (self._uses >= self.reuse))
        self._retire(spent)
        return int(spent.size)

    def release_client(self, client: str) -> int:
        """Make a departed client's chunks unowned (drawable by others); returns how many."""
        cid = self._clients.get(client)
        if cid is None:
            return 0
        mine = np.flatnonzero(self._filled & (self._owner == cid))
        self._owner[mine] = NO_OWNER
        self._last[mine] = -1      # batch indices of different clients are not comparable
        return int(mine.size)

    def freshness(self) -> dict:
        """Freshness figures and counts (ratios are 0.0 until there is something to count).

        - ``first_use_share``: share of served chunks that were a chunk's first use;
        - ``mean_uses_retired``: mean uses of retired chunks;
        - ``mean_reuse_distance``: mean number of the owner's batches between consecutive
          uses of a chunk (1 = used again in the very next batch).
        """
        return {
            "first_use_share": self._first_uses / self.served if self.served else 0.0,
            "mean_uses_retired": self._retired_uses / self.retired if self.retired else 0.0,
            "mean_reuse_distance": self._gap_sum / self._gap_count if self._gap_count else 0.0,
            "added": self.added, "served": self.served, "retired": self.retired,
            "stored": len(self), "capacity": self.capacity, "reuse": self.reuse,
        }

    def _client_index(self, client: str) -> int:
        cid = self._clients.get(client)
        if cid is None:
            cid = self._clients[client] = len(self._client_batches)
            self._client_batches.append(0)
        return cid

    def _usable(self, cid: int) -> np.ndarray:
        return self._filled & ((self._owner == NO_OWNER) | (self._owner == cid))

    def _record_use(self, slots: np.ndarray, cid: int, batch_index: int) -> None:
        last = self._last[slots]
        seen = last >= 0
        self._gap_sum += int((batch_index - last[seen]).sum())
        self._gap_count += int(np.count_nonzero(seen))
        self._first_uses += int(np.count_nonzero(self._uses[slots] == 0))
        self._uses[slots] += 1
        self._owner[slots] = cid
        self._last[slots] = batch_index
        self.served += slots.size

    def _retire(self, slots: np.ndarray) -> None:
        if slots.size == 0:
            return
        self._retired_uses += int(self._uses[slots].sum())
        self.retired += int(slots.size)
        self._filled[slots] = False
        self._owner[slots] = NO_OWNER
        self._uses[slots] = 0
        self._last[slots] = -1
        self._song[slots] = ""
        self._augment[slots] = None
