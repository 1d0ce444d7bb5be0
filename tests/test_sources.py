import hashlib
import os
import threading
import time

import pytest

from policyfresh.ingest.sources import (
    LEAVES_ROOT,
    LINKED_FOLDER,
    TreeState,
    scan_sources,
    tree_state,
    wait_until_quiet,
)
from policyfresh.store.errors import PoliciesNotFoundError


def test_scan_hashes_files_and_skips_hidden_and_owners(tmp_path):
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "leave.md").write_bytes(b"# Leave")
    (tmp_path / "OWNERS").write_text("hr/** team:hr\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    files, errors, _ = scan_sources(tmp_path)
    assert errors == []
    assert [f.doc_id for f in files] == ["hr/leave.md"]
    assert files[0].sha256 == hashlib.sha256(b"# Leave").hexdigest()
    assert files[0].size_bytes == 7


def test_odd_files_are_reported_not_raised(tmp_path):
    (tmp_path / "ok.md").write_text("# ok")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    os.mkfifo(tmp_path / "pipe.md")
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "OWNERS").write_text("* team:hr\n")
    files, errors, _ = scan_sources(tmp_path)
    assert [f.doc_id for f in files] == ["ok.md"]
    reasons = dict(errors)
    assert reasons["loop.md"].startswith("not a regular file")
    assert reasons["pipe.md"].startswith("not a regular file")
    assert reasons["hr/OWNERS"].startswith("nested OWNERS files are not read")


def test_links_that_leave_the_root_are_refused_and_linked_folders_reported(tmp_path):
    root, outside = tmp_path / "policies", tmp_path / "outside"
    (root / "hr").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "hr" / "leave.md").write_text("# Leave")
    (root / "passwd.txt").symlink_to(outside / "passwd.txt")
    (root / "escape.md").symlink_to(root / ".." / "outside" / "passwd.txt")
    (root / "leave-again.md").symlink_to(root / "hr" / "leave.md")  # inside: read as usual
    (root / "shared").symlink_to(outside, target_is_directory=True)
    files, errors, _ = scan_sources(root)
    assert [f.doc_id for f in files] == ["hr/leave.md", "leave-again.md"]
    assert dict(errors) == {
        "escape.md": LEAVES_ROOT,
        "passwd.txt": LEAVES_ROOT,
        "shared": LINKED_FOLDER,
    }


def test_a_root_below_a_hidden_folder_is_scanned(tmp_path):
    root = tmp_path / ".config" / "policies"
    root.mkdir(parents=True)
    (root / "leave.md").write_text("# Leave")
    assert [f.doc_id for f in scan_sources(root)[0]] == ["leave.md"]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(PoliciesNotFoundError, match="policies folder not found"):
        scan_sources(tmp_path / "nope")


def write_policies(root, count=3):
    for number in range(count):
        (root / f"p{number}.md").write_text(f"# Policy {number}\n\nText {number}.")
    (root / "OWNERS").write_text("* team:risk\n")


def test_the_fingerprint_moves_with_content_presence_and_problems_not_with_a_touch(tmp_path):
    write_policies(tmp_path)
    first = tree_state(tmp_path)
    later = time.time() + 100
    os.utime(tmp_path / "p0.md", (later, later))
    touched = tree_state(tmp_path, first.files)
    assert touched.fingerprint == first.fingerprint
    assert touched.files["p0.md"].mtime_ns != first.files["p0.md"].mtime_ns
    (tmp_path / "p1.md").write_text("# Policy 1\n\nNew text.")
    (tmp_path / "p3.md").write_text("# Policy 3")
    (tmp_path / "p2.md").unlink()
    edited = tree_state(tmp_path, touched.files)
    assert edited.fingerprint != first.fingerprint
    assert edited.changes_since(first) == {
        "added": ["p3.md"], "changed": ["p1.md"], "removed": ["p2.md"]
    }  # fmt: skip
    (tmp_path / "OWNERS").write_text("* team:hr\n")
    assert tree_state(tmp_path, edited.files).fingerprint != edited.fingerprint
    (tmp_path / "pipe.md").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "pipe.md")
    assert tree_state(tmp_path, edited.files).problems == {
        "pipe.md": "not a regular file (broken link, pipe or device)"
    }


def test_files_whose_stat_did_not_move_are_not_read_again(tmp_path):
    write_policies(tmp_path, 1)
    path = tmp_path / "p0.md"
    first = tree_state(tmp_path)
    stat = path.stat()
    path.write_text(path.read_text().replace("Text", "Tezt"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tree_state(tmp_path, first.files).files["p0.md"] == first.files["p0.md"]
    assert tree_state(tmp_path).files["p0.md"] != first.files["p0.md"]


def test_tree_state_round_trips_through_json(tmp_path):
    write_policies(tmp_path)
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    state = tree_state(tmp_path)
    again = TreeState.from_json(state.to_json())
    assert (again.files, again.problems, again.fingerprint) == (
        state.files, state.problems, state.fingerprint
    )  # fmt: skip


def test_a_burst_of_saves_is_waited_out(tmp_path):
    write_policies(tmp_path)
    old = time.time() - 60
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    os.utime(tmp_path, (old, old))
    assert wait_until_quiet(tmp_path, None, quiet_seconds=0.5, timeout=5) is not None

    begun = threading.Event()

    def burst():
        for number in range(10):
            (tmp_path / f"burst{number}.md").write_text(f"# Burst {number}")
            begun.set()
            time.sleep(0.05)  # the editor's pace between saves, a tenth of the quiet time

    writer = threading.Thread(target=burst)
    writer.start()
    assert begun.wait(timeout=60)
    settled = wait_until_quiet(tmp_path, None, quiet_seconds=0.5, timeout=60)
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert settled is not None and len(settled.files) == 14  # 3 policies, OWNERS, 10 new
    assert time.time() - settled.newest_mtime >= 0.5


def test_a_tree_that_keeps_changing_gives_up_at_the_timeout(tmp_path):
    write_policies(tmp_path)
    stop = threading.Event()

    def keep_writing():
        while not stop.wait(0.05):  # a save every 0.05 s, a tenth of the quiet time
            (tmp_path / "p0.md").write_text(f"# Policy {time.time()}")

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert wait_until_quiet(tmp_path, None, quiet_seconds=0.5, timeout=1.5) is None
    finally:
        stop.set()
        writer.join(timeout=60)
