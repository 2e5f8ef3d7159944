"""The sweep's study storage: SQLite openers take turns."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")


def test_openers_of_one_sqlite_study_take_turns(tmp_path: Path) -> None:
    """Creating a study's tables from two processes at once collides (alembic_version already exists):
    open_storage waits for the file's lock, so the driver and a status reader never race."""
    import threading

    from flux2_lora.experiments.store import open_storage
    from flux2_lora.locks import FileLock

    db = tmp_path / "study.db"
    held = FileLock(Path(f"{db}.lock"))
    assert held.acquire()
    opened = threading.Event()
    opener = threading.Thread(target=lambda: (open_storage(f"sqlite:///{db}"), opened.set()))
    opener.start()
    try:
        assert not opened.wait(1.0)  # held out while the lock is taken
    finally:
        held.release()
    opener.join(60)
    assert opened.is_set() and db.is_file()
