"""The run folder guard: what --overwrite may delete, and what it never deletes."""

from __future__ import annotations

import os

import pytest

from llmft.checkpoint.outputs import RUN_MARKER, check_output_dir, claim_output_dir
from llmft.errors import UserError


def _run_folder(path):
    claim_output_dir(path, overwrite=False)
    (path / "metrics.jsonl").write_text("{}\n")
    return path


def test_new_and_empty_folders_are_claimed(tmp_path):
    run = claim_output_dir(tmp_path / "a" / "b", overwrite=False)
    assert (run / RUN_MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert (claim_output_dir(tmp_path / "empty", overwrite=False) / RUN_MARKER).is_file()


def test_earlier_run_needs_overwrite(tmp_path):
    run = _run_folder(tmp_path / "run")
    with pytest.raises(UserError, match="holds an earlier run; pass --overwrite"):
        check_output_dir(run, overwrite=False)
    claim_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


def test_foreign_folders_files_and_links_are_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "llmft_config.yaml").write_text("train: {}\n")  # our config's name is not our marker
    with pytest.raises(UserError, match="is not an llmft run folder"):
        check_output_dir(project, overwrite=True)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_dir(project / "llmft_config.yaml", overwrite=True)
    with pytest.raises(UserError, match="lies under .* which is a file"):
        check_output_dir(project / "llmft_config.yaml" / "run", overwrite=True)
    run = _run_folder(tmp_path / "run")
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(UserError, match="is a symbolic link"):
        check_output_dir(tmp_path / "link", overwrite=True)
    marker_dir = tmp_path / "odd"
    (marker_dir / RUN_MARKER).mkdir(parents=True)
    with pytest.raises(UserError, match="is not an llmft run folder"):
        check_output_dir(marker_dir, overwrite=True)


def test_overwrite_never_deletes_what_the_run_reads(tmp_path):
    run = _run_folder(tmp_path / "run")
    (run / "model").mkdir()
    with pytest.raises(UserError, match=r"holds model.name .* which this run reads"):
        check_output_dir(run, overwrite=True, inputs={"model.name": run / "model"})
    with pytest.raises(UserError, match=r"holds data.path"):
        check_output_dir(run, overwrite=True, inputs={"data.path": run})
    check_output_dir(run, overwrite=True, inputs={"data.path": tmp_path / "elsewhere.jsonl"})


def test_current_folder_is_cleared_not_removed_and_its_parents_are_refused(tmp_path, monkeypatch):
    run = _run_folder(tmp_path / "run")
    (run / "sub").mkdir()
    monkeypatch.chdir(run / "sub")
    with pytest.raises(UserError, match="holds the current folder"):
        check_output_dir(run, overwrite=True)
    monkeypatch.chdir(run)
    claim_output_dir(run.__class__("."), overwrite=True)
    assert os.getcwd() == str(run) and sorted(p.name for p in run.iterdir()) == [RUN_MARKER]
