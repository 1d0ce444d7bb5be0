import hashlib
import os

import pytest

from ragfresh.errors import PoliciesNotFoundError
from ragfresh.sources import scan_sources


def test_scan_hashes_files_and_skips_hidden_and_owners(tmp_path):
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "leave.md").write_bytes(b"# Leave")
    (tmp_path / "OWNERS").write_text("hr/** team:hr\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    files, errors = scan_sources(tmp_path)
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
    files, errors = scan_sources(tmp_path)
    assert [f.doc_id for f in files] == ["ok.md"]
    reasons = dict(errors)
    assert reasons["loop.md"].startswith("not a regular file")
    assert reasons["pipe.md"].startswith("not a regular file")
    assert reasons["hr/OWNERS"].startswith("nested OWNERS files are not read")


def test_a_root_below_a_hidden_folder_is_scanned(tmp_path):
    root = tmp_path / ".config" / "policies"
    root.mkdir(parents=True)
    (root / "leave.md").write_text("# Leave")
    assert [f.doc_id for f in scan_sources(root)[0]] == ["leave.md"]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(PoliciesNotFoundError, match="policies folder not found"):
        scan_sources(tmp_path / "nope")
