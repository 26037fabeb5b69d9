"""The one write primitive (cvapps.io.safe_write): fresh regular files inside OUT, through no link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cvapps.errors import OutputError
from cvapps.io.guard import output_root
from cvapps.io.safe_write import (
    check_tree,
    discard_all,
    ensure_writable_folder,
    fresh_dir,
    open_append,
    stage,
    write_bytes,
    write_with,
)


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("victim")
    return out, elsewhere


def test_a_linked_folder_below_out_is_refused(tree) -> None:
    out, elsewhere = tree
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    (out / "real").mkdir()
    (out / "real" / "deep").symlink_to(elsewhere, target_is_directory=True)
    with output_root(out):
        for target in (out / "sub" / "x.jpg", out / "real" / "deep" / "y" / "x.jpg"):
            with pytest.raises(OutputError, match="is a symbolic link"):
                write_bytes(target, b"x")
        (out / "file").write_text("f")
        with pytest.raises(OutputError, match="is not a folder"):
            write_bytes(out / "file" / "x", b"x")
        with pytest.raises(OutputError, match="climbs out"):
            write_bytes(out / "real" / ".." / ".." / "elsewhere" / "x", b"x")
    assert sorted(os.listdir(elsewhere)) == ["victim.txt"] and (elsewhere / "victim.txt").read_text() == "victim"


@pytest.mark.parametrize("registered", [True, False])
def test_a_link_at_the_final_name_is_replaced_never_written_through(tree, registered: bool) -> None:
    out, elsewhere = tree
    (out / "sym.json").symlink_to(elsewhere / "victim.txt")
    (out / "dangling.json").symlink_to(elsewhere / "missing.txt")
    os.link(elsewhere / "victim.txt", out / "hard.json")
    with output_root(out) if registered else _nothing():
        for name in ("sym.json", "dangling.json", "hard.json"):
            write_bytes(out / name, b"new")
            st = os.lstat(out / name)
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and (out / name).read_bytes() == b"new"
    assert (elsewhere / "victim.txt").read_text() == "victim" and not (elsewhere / "missing.txt").exists()
    assert os.lstat(elsewhere / "victim.txt").st_nlink == 1


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_writers_that_need_a_path_get_one_pinned_to_the_folder(tree) -> None:
    out, _ = tree
    with output_root(out):
        write_with(out / "a" / "b.bin", lambda tmp: Path(tmp).write_bytes(b"via path"))
        with pytest.raises(OutputError, match="could not write .*b.bin: Permission denied"):
            write_with(out / "a" / "b.bin", lambda tmp: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    assert (out / "a" / "b.bin").read_bytes() == b"via path"
    assert sorted(os.listdir(out / "a")) == ["b.bin"]  # the failed write left no temp file


def test_discard_removes_the_folders_made_for_it(tree) -> None:
    out, _ = tree
    with output_root(out):
        first, second = stage(out / "tracks" / "a.txt"), stage(out / "tracks" / "labels.txt")
        discard_all([first, second])
        assert os.listdir(out) == []  # no empty tracks/ after a failed run
        kept = stage(out / "kept" / "x.txt")
        kept.commit()
    assert (out / "kept" / "x.txt").is_file()


def test_append_refuses_anything_but_its_own_regular_file(tree, tmp_path: Path) -> None:
    out, elsewhere = tree
    (out / "sym.jsonl").symlink_to(elsewhere / "victim.txt")
    os.link(elsewhere / "victim.txt", out / "hard.jsonl")
    os.mkfifo(out / "fifo.jsonl")
    with output_root(out):
        for name, why in (("sym.jsonl", "symbolic link"), ("hard.jsonl", "hard link"), ("fifo.jsonl", "not a regular")):
            with pytest.raises(OutputError, match=why):
                open_append(out / name)
        with open_append(out / "m.jsonl") as fh:
            fh.write(b"one\n")
        with open_append(out / "m.jsonl") as fh:
            assert fh.read() == b"one\n"
    assert (elsewhere / "victim.txt").read_text() == "victim"


def test_fresh_dir_and_check_tree(tree) -> None:
    out, elsewhere = tree
    (out / "run").symlink_to(elsewhere, target_is_directory=True)
    with output_root(out):
        fresh_dir(out / "run")  # the link itself goes, never what it points to
        assert (out / "run").is_dir() and not (out / "run").is_symlink() and os.listdir(out / "run") == []
        check_tree(out)
        os.link(elsewhere / "victim.txt", out / "run" / "hard")
        with pytest.raises(OutputError, match="hard link"):
            check_tree(out / "run")
        os.unlink(out / "run" / "hard")
        (out / "run" / "weights").symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(OutputError, match="symbolic link"):
            check_tree(out / "run")
    assert sorted(os.listdir(elsewhere)) == ["victim.txt"]


def test_out_itself_may_be_a_link_the_user_chose(tree) -> None:
    out, elsewhere = tree
    chosen = out.parent / "chosen"
    chosen.symlink_to(elsewhere, target_is_directory=True)
    with output_root(chosen):
        write_bytes(chosen / "x.txt", b"x")
    assert (elsewhere / "x.txt").read_bytes() == b"x"


def test_writable_folder_check_leaves_nothing(tmp_path: Path) -> None:
    ensure_writable_folder(tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out").is_dir() and not list((tmp_path / "new").rglob("*.*"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symbolic link to .*does not exist"):
        ensure_writable_folder(tmp_path / "dangling", "out=")
