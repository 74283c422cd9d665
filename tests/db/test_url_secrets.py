"""Database URLs kept off the command line: read from a file (`--db-file`), and recognised as
secret when they carry a password (the services warn about `--db` then)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbweaver.storage.db.url import has_password, parse_url, read_url_file


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("mariadb://user:pw@host:3306/db", True),
        ("mysql://user:p%40ss@host/db", True),
        ("mariadb://:pw@host/db", True),
        ("mariadb://user@host:3306/db", False),
        ("mariadb:///db?unix_socket=/run/mysqld.sock", False),
        ("sqlite:///jobs.db", False),
    ],
)
def test_has_password(url: str, secret: bool) -> None:
    assert has_password(url) is secret


def test_read_url_file_takes_its_one_line(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text("\n   mariadb://u:s3cret@h:3306/orb  \n\n")
    url = read_url_file(str(path))
    assert url == "mariadb://u:s3cret@h:3306/orb"
    config = parse_url(url)
    assert (config.user, config.password) == ("u", "s3cret")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        (" \n\t\n", "is empty"),
        ("mariadb://u:a@h/x\nmariadb://u:b@h/y\n", "has 2 lines; it must hold one URL"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_read_url_file_refuses_anything_but_one_url(
    content: str | bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "db"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_url_file(str(path))
    assert str(path) in str(info.value)
    assert "u:a@" not in str(info.value)  # never the content


def test_read_url_file_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the database URL file .*No such file"):
        read_url_file(str(tmp_path / "nothing"))
