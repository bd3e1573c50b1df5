"""The scan that indexes a newly assigned partition's users (scoring.index_new_partitions), without
a broker: the table's snapshot and the forgets that run while the scan yields to the event loop."""
import asyncio

from stream_app import scoring, state
from stream_app.partitioning import partition_for
from stream_app.state_cache import StateCache


class Snapshot:
    """The users table as the scan reads it: ``items()`` from a snapshot taken when it starts,
    running ``meanwhile(key)`` before each item (what the event loop did between two chunks)."""

    def __init__(self, rows: dict, meanwhile):
        self.rows, self.meanwhile = rows, meanwhile

    def items(self):
        for key, raw in list(self.rows.items()):
            self.meanwhile(key)
            yield key, raw


def test_a_user_forgotten_while_the_scan_reads_its_snapshot_is_not_cached_again(monkeypatch):
    """A forget applied while the scan runs deletes the user, and its flush drops the entry from
    the cache; the snapshot still holds the old state. Before, the scan found the user there and
    not in the cache, and cached the old state again: the web view showed the forgotten user,
    and scoring wrote it back to the table."""
    n = scoring.settings.partitions
    keys = [k for k in (b"u%d" % i for i in range(200)) if partition_for(k, n) == 0][:3]
    cache = StateCache(10**9)

    def meanwhile(key):
        if key == keys[0]:  # while the first user is read, the last is forgotten and flushed
            cache.delete(0, keys[2])
            cache.settled(cache.take(0))

    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "scorer", scoring.Pass())
    monkeypatch.setattr(scoring, "users", Snapshot({k: state.dump(state.new_state()) for k in keys}, meanwhile))
    monkeypatch.setattr(scoring, "owned_partitions", lambda: {0})
    asyncio.run(scoring.index_new_partitions())
    assert set(cache.entries) == set(keys[:2])
    assert cache.scan_deletes is None and scoring.app.scorer.indexed == {0}
