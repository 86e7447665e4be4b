"""Database URLs that cannot work: each is one SliceScopeError line that names the fix and never shows the password."""

from __future__ import annotations

import pytest

from core.errors import SliceScopeError
from core.store import AnnotationStore

PASSWORD = "s3cret"


@pytest.mark.parametrize("url, problem", [
    (f"postgresql://u:{PASSWORD}@host:abc/db", "port that is not a number"),
    (f"postgresql://u:{PASSWORD}@localhost:99999/db", "port outside 1 to 65535"),
    (f"postgresql://u:{PASSWORD}@localhost:0/db", "port outside 1 to 65535"),
    (f"postgresql://u:{PASSWORD}@[::1/db", "port that is not a number"),
    (f"postgresql://u@localhost:99999/db?password={PASSWORD}", "port outside 1 to 65535"),
    # Without a host the password reads as a port; it must stay hidden all the same.
    (f"postgresql://u:{PASSWORD}", "port that is not a number"),
    (f"postgresql://u:{PASSWORD}/db", "port that is not a number"),
    (f"postgresql://u:pass@{PASSWORD}@host:abc/db", "port that is not a number"),
    (f"postgres//u:{PASSWORD}@host/db", "is not a database URL"),
    (f"://u:{PASSWORD}@h/d", "is not a database URL"),
    (f"postgresql+nosuchdriver://u:{PASSWORD}@h/d", "through psycopg, not nosuchdriver"),
    ("sqlite+nosuchdriver:///annotations.sqlite", "through pysqlite, not nosuchdriver"),
    (f"mysql://u:{PASSWORD}@h/d", "SQLite or PostgreSQL, not mysql"),
    ("", "the database URL is empty"),
    ("  \n ", "the database URL is empty"),
    # Parsed fine, but nothing answers: on port 1 of this machine, or on the default local socket.
    (f"postgresql://u:{PASSWORD}@", "cannot be used"),
    (f"postgresql://u@127.0.0.1:1/db?password={PASSWORD}", "cannot be used"),
    ("sqlite:////nonexistent/folder/annotations.sqlite", "cannot be used"),
    # /proc takes no new files, not even from root.
    ("sqlite:////proc/annotations.sqlite", "cannot be used"),
])
def test_unusable_url_is_one_line_naming_the_fix_without_the_password(url, problem):
    with pytest.raises(SliceScopeError, match=problem) as error:
        AnnotationStore(url)
    message = str(error.value)
    assert PASSWORD not in message
    assert len(message.splitlines()) == 1
    assert "SLICESCOPE_DATABASE_URL" in message


def test_a_sqlite_file_under_a_file_is_explained(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(SliceScopeError, match="cannot be used"):
        AnnotationStore(f"sqlite:///{tmp_path / 'not-a-folder' / 'annotations.sqlite'}")
