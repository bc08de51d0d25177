"""Another local user must not choose what the SQLite store's files open: a symlink planted as the
database's `-wal` was followed (the target made 0600 and opened as the journal; /etc/passwd under
root), and a directory another user can write in lets them replace the files at any time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from webhook_app.errors import StoreUnavailable
from webhook_app.store.sqlite import SQLiteStore


def _open(path: Path) -> None:
    s = SQLiteStore(str(path))
    try:
        s.migrate()
    finally:
        s.close()


@pytest.mark.parametrize("planted", ["app.db-wal", "app.db-shm", "app.db-lock", "app.db"])
def test_a_symlink_planted_in_a_shared_directory_is_refused_and_its_target_left_alone(tmp_path, planted):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: every user may write, the sticky bit set
    victim = tmp_path / "victim"
    victim.write_text("not a journal\n")
    victim.chmod(0o644)
    (shared / planted).symlink_to(victim)
    if os.geteuid() == 0:
        os.lchown(shared / planted, 65534, 65534)  # nobody's, as another user would leave it
    elif planted == "app.db":
        pytest.skip("a symlink of another user needs root (this user's own symlink is followed)")
    with pytest.raises(StoreUnavailable, match="symbolic link"):
        _open(shared / "app.db")
    assert oct(victim.stat().st_mode & 0o777) == "0o644" and victim.read_text() == "not a journal\n"


def test_a_directory_every_user_may_write_in_without_the_sticky_bit_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StoreUnavailable, match="every user may write in") as err:
        _open(shared / "app.db")
    assert "WEBHOOK_APP_DATABASE_URL" in err.value.detail and not list(shared.iterdir())


def test_a_directory_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o755)
    os.chown(theirs, 65534, 65534)  # nobody
    with pytest.raises(StoreUnavailable, match=r"belongs to another user \(uid 65534\)"):
        _open(theirs / "app.db")


def test_a_symlink_of_this_users_own_to_the_database_is_followed(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    link = tmp_path / "app.db"
    link.symlink_to(tmp_path / "data" / "real.db")
    _open(link)
    assert (tmp_path / "data" / "real.db").stat().st_size > 0
