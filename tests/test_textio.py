"""Text files are read as users expect (UTF-8 lines, plain or gzipped) and written all or nothing."""

from __future__ import annotations

import gzip
import os
import re
import stat
from pathlib import Path

import pytest

from seq2seq.errors import DataError
import seq2seq.textio
from seq2seq.textio import atomic_write, iter_lines, read_lines

LINES = ["first line", "zweite Zeile mit Umlauten: äöü", "", "第四行", "  spaces kept  "]


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_gzipped_and_plain_files_read_the_same(tmp_path: Path) -> None:
    data = "\n".join(LINES).encode("utf-8") + b"\n"
    plain = write_bytes(tmp_path / "text.txt", data)
    zipped = write_bytes(tmp_path / "text.txt.gz", gzip.compress(data))

    assert read_lines(plain) == LINES
    assert read_lines(zipped) == LINES


def test_gzip_is_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    data = "\n".join(LINES).encode("utf-8") + b"\n"
    assert read_lines(write_bytes(tmp_path / "no_suffix", gzip.compress(data))) == LINES


def test_a_last_line_without_newline_is_still_a_line(tmp_path: Path) -> None:
    assert read_lines(write_bytes(tmp_path / "t.txt", b"one\ntwo")) == ["one", "two"]


def test_crlf_line_ends_and_a_leading_bom_are_stripped(tmp_path: Path) -> None:
    data = "\ufeff" + "\r\n".join(LINES) + "\r\n"
    plain = write_bytes(tmp_path / "windows.txt", data.encode("utf-8"))
    zipped = write_bytes(tmp_path / "windows.txt.gz", gzip.compress(data.encode("utf-8")))

    assert read_lines(plain) == LINES
    assert read_lines(zipped) == LINES


def test_a_bom_after_the_first_line_is_content(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "t.txt", "a\n\ufeffb\n".encode("utf-8"))
    assert read_lines(path) == ["a", "\ufeffb"]


def test_lines_split_only_on_newline(tmp_path: Path) -> None:
    # U+2028 (line separator), U+0085 (next line), form feed and a lone \r are characters inside a line:
    # line numbers must agree with `wc -l` and with the other side of a parallel corpus.
    inside = "a\u2028b\u0085c\x0cd\re"
    path = write_bytes(tmp_path / "t.txt", f"{inside}\nnext\n".encode("utf-8"))

    assert read_lines(path) == [inside, "next"]


def test_invalid_utf8_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "latin1.txt", b"ok\nstill ok\ncaf\xe9\n")

    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3:.*UTF-8"):
        read_lines(path)


def test_invalid_utf8_in_a_gzipped_file_names_file_and_line(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "latin1.gz", gzip.compress(b"ok\ncaf\xe9\n"))

    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2:"):
        read_lines(path)


def test_a_nul_byte_says_the_file_looks_binary(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "model.bin", b"text\n\x00\x01\x02\n")

    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2:.*looks like a binary file"):
        read_lines(path)


TRICKY = ("\ufeffBOM first\r\nzweite Zeile: äöü\n\n第四行 is longer than a block here\r\n"
          "a\u2028b\u0085c\x0cd\re\n\u00e9\u00e9\u00e9\ncrlf and no newline at the end\r").encode("utf-8")


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 24])
@pytest.mark.parametrize("zipped", [False, True])
def test_reading_by_blocks_gives_the_lines_read_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          block: int, zipped: bool) -> None:
    # blocks that end inside a line, inside a UTF-8 sequence, between \r and \n, and blocks larger than the file
    path = write_bytes(tmp_path / "t.txt", gzip.compress(TRICKY) if zipped else TRICKY)
    monkeypatch.setattr(seq2seq.textio, "READ_BLOCK", block)

    assert read_lines(path) == list(iter_lines(path))
    assert read_lines(path)[0] == "BOM first" and read_lines(path)[-1] == "crlf and no newline at the end"


@pytest.mark.parametrize("block", [5, 1 << 24])
def test_invalid_utf8_in_a_later_block_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       block: int) -> None:
    path = write_bytes(tmp_path / "t.txt", "".join(f"line {n}\n" for n in range(1, 40)).encode() + b"caf\xe9\nok\n")
    monkeypatch.setattr(seq2seq.textio, "READ_BLOCK", block)

    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:40: invalid UTF-8 at byte 4"):
        read_lines(path)


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_lines(tmp_path / "missing.txt")


def test_a_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder"):
        read_lines(tmp_path)


def test_corrupt_gzip_data_is_a_data_error(tmp_path: Path) -> None:
    data = gzip.compress(("many words in a line\n" * 200).encode("utf-8"))
    path = write_bytes(tmp_path / "cut.gz", data[: len(data) // 2])

    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: corrupt gzip"):
        read_lines(path)


def test_atomic_write_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "out.txt", b"old\n")

    with atomic_write(path) as file:
        file.write("new\n")

    assert path.read_text(encoding="utf-8") == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_writes_newlines_as_lf_and_text_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_write(path) as file:
        file.write("ä\nb\n")
    assert path.read_bytes() == "ä\nb\n".encode("utf-8")


def test_atomic_write_leaves_the_old_content_when_the_body_raises(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "out.txt", b"old\n")

    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(path) as file:
        file.write("half of the new")
        raise RuntimeError("disk on fire")

    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_creates_nothing_when_the_first_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "new.bin"

    with pytest.raises(KeyboardInterrupt), atomic_write(path, binary=True) as file:
        file.write(b"\x00" * 10)
        raise KeyboardInterrupt

    assert list(tmp_path.iterdir()) == []


def test_atomic_write_into_a_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot write"), atomic_write(tmp_path / "nowhere" / "out.txt"):
        pass


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_a_new_file_the_umasks_mode(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        with atomic_write(tmp_path / "new.txt") as file:
            file.write("x\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == mode


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "shared.txt"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o640)
    with atomic_write(path) as file:
        file.write("new\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text(encoding="utf-8") == "new\n"


def test_atomic_write_through_a_symbolic_link_writes_the_file_it_names(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old\n", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with atomic_write(link) as file:
        file.write("new\n")
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "new\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_atomic_write_into_a_fifo_writes_through_it_and_leaves_it_a_fifo(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    with atomic_write(fifo) as file:
        file.write("through\n")
    reader.join(timeout=30)
    assert received == ["through\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode), "still a FIFO, not replaced by a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_says_why_the_file_cannot_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "out.txt").write_text("old\n", encoding="utf-8")
    folder.chmod(0o555)
    try:
        with pytest.raises(DataError, match="written whole through a temporary file beside them, and the folder"):
            with atomic_write(folder / "out.txt") as file:
                file.write("new\n")
    finally:
        folder.chmod(0o755)
