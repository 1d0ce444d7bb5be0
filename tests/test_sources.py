import hashlib

import pytest

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


def test_unreadable_file_is_reported_not_raised(tmp_path):
    (tmp_path / "ok.md").write_text("# ok")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    files, errors = scan_sources(tmp_path)
    assert [f.doc_id for f in files] == ["ok.md"]
    assert errors[0][0] == "loop.md" and errors[0][1].startswith("unreadable:")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="policies folder not found"):
        scan_sources(tmp_path / "nope")
