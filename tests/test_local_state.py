"""The local state's check against its changelog: a database built from another changelog that
also carried an unwritten marker."""
from __future__ import annotations

from stream_app import local_state


def _database(path):
    """An empty RocksDB database at ``path``, as Faust makes one (no persisted offset yet)."""
    from rocksdict import Options, Rdict

    Rdict(str(path), Options(raw_mode=True)).close()


def test_a_database_of_another_changelog_with_an_unwritten_marker_is_rebuilt_once(tmp_path, monkeypatch):
    """The topics were recreated while a flush was refused: the database is deleted for its other
    changelog, and its marker with it. Before, the marker stayed, and the next start deleted the
    database Faust had rebuilt meanwhile, for a second full restore."""
    path = tmp_path / "users-0.db"
    _database(path)
    local_state.unwritten_marker(path).touch()
    (tmp_path / "changelog.id").write_text("the-old-id\n")
    monkeypatch.setattr(local_state, "changelog_id", lambda settings, topic: "the-new-id")
    monkeypatch.setattr(local_state, "changelog_ends", lambda settings, topic: {0: 0})
    assert local_state.rebuild_stale(None, {0: path}, "changelog") == [0]
    assert not path.exists() and not local_state.unwritten_marker(path).exists()
    assert (tmp_path / "changelog.id").read_text() == "the-new-id\n"
    _database(path)  # Faust rebuilds it from the changelog
    assert local_state.rebuild_stale(None, {0: path}, "changelog") == []  # the next start keeps it
    assert path.exists()



def test_a_state_directory_is_one_workers(tmp_path):
    """A second worker on the same INTEREST_DATA_DIR waited on RocksDB's lock of each partition,
    then stopped with tracebacks after putting the first through a rebalance. flock's lock belongs
    to the open file, so a second open of the lock file in this process stands for that worker."""
    import os

    import pytest

    from stream_app.settings import ConfigError

    local_state.lock_state_dir(tmp_path)
    try:
        with pytest.raises(ConfigError) as err:
            local_state.lock_state_dir(tmp_path)
        assert str(err.value) == (f"INTEREST_DATA_DIR: {tmp_path} is in use by another worker (pid {os.getpid()}); "
                                  "workers on one host need their own INTEREST_DATA_DIR")
    finally:
        local_state._held.pop().close()  # the first worker ends: the kernel drops its lock
    local_state.lock_state_dir(tmp_path)
    local_state._held.pop().close()


def test_a_lock_file_that_cannot_be_opened_is_a_config_error(tmp_path):
    """A worker.lock that is a directory: `interest-stream worker` stopped with IsADirectoryError's
    traceback; now it is the one line of a ConfigError naming the file."""
    import pytest

    from stream_app.settings import ConfigError

    (tmp_path / local_state.LOCK_FILE).mkdir()
    held = list(local_state._held)
    with pytest.raises(ConfigError) as err:
        local_state.lock_state_dir(tmp_path)
    assert str(err.value) == f"INTEREST_DATA_DIR: cannot open {tmp_path / 'worker.lock'}: Is a directory"
    assert local_state._held == held
