"""Files written whole or not at all, and what the commands say when the system refuses a write or the user
presses Ctrl-C."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from vision_mamba import cli
from vision_mamba.engine import save_state
from vision_mamba.engine.files import atomic_write, write_json
from vision_mamba.models.checkpoint import save_state_dict


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    write_json(target, {"top1": 80.0})

    def half_then_full(tmp):
        tmp.write_text('{"top1": 9')
        _disk_full()

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_full)
    assert target.read_text() == '{\n  "top1": 80.0\n}\n'
    # checkpoints and exported weights likewise
    save_state(tmp_path / "last.pth", {"epoch": 1})
    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.raises(OSError):
        save_state(tmp_path / "last.pth", {"epoch": 2})
    with pytest.raises(OSError):
        save_state_dict({"w": torch.zeros(2)}, tmp_path / "weights.pth")
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pth")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "out.json"]


@pytest.mark.parametrize("error, code, message", [
    (OSError(errno.ENOSPC, "No space left on device"), 1,
     "vision-mamba eval: error: [Errno 28] No space left on device (VISION_MAMBA_TRACEBACK=1 shows where)"),
    (PermissionError(errno.EACCES, "Permission denied", "/out/r.json"), 1,
     "vision-mamba eval: error: [Errno 13] Permission denied: '/out/r.json'"),
    (KeyboardInterrupt(), 130, "vision-mamba eval: interrupted")])
def test_a_refused_write_or_ctrl_c_is_one_line_not_a_traceback(error, code, message, monkeypatch, capsys):
    from vision_mamba.train import eval_command

    def main(args):
        raise error

    monkeypatch.setattr(eval_command, "main", main)
    assert cli.main(["eval", "--checkpoint", "x"]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if isinstance(error, OSError):  # a developer can ask for the traceback
        monkeypatch.setenv("VISION_MAMBA_TRACEBACK", "1")
        with pytest.raises(OSError):
            cli.main(["eval", "--checkpoint", "x"])


def test_a_misspelt_scan_backend_is_refused_before_the_command_runs(monkeypatch, capsys):
    monkeypatch.setenv("VISION_MAMBA_SCAN", "trition")
    assert cli.main(["eval", "--checkpoint", "x"]) == 2
    assert ("vision-mamba eval: error: unknown scan backend 'trition' (from the environment variable "
            "VISION_MAMBA_SCAN); choose one of reference, torch, compiled, triton, auto") in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """--json / --plot / --output are checked before a command's work (an evaluation would otherwise run to the
    end, then fail on its report). Permissions do not bind root, so the refusal is simulated in os.access."""
    import os

    from vision_mamba.engine.files import unwritable

    (tmp_path / "file").write_text("x")
    assert unwritable(tmp_path / "new" / "deeper" / "r.json") is None
    assert unwritable(tmp_path / "file" / "r.json") == f"{tmp_path / 'file'} is a file, not a folder"
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    assert cli.main(["eval", "--checkpoint", "x", "--json", str(locked / "sub" / "r.json")]) == 2
    assert f"vision-mamba eval: error: --json {locked / 'sub' / 'r.json'}: no permission to write in {locked}" \
        in capsys.readouterr().err
    assert cli.main(["seg-eval", "--checkpoint", "x", "--output", str(tmp_path / "file" / "r.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_state_read_for_its_configuration_maps_its_tensors_and_reads_legacy_files_whole(tmp_path, monkeypatch):
    # (the configuration a resume starts from is read with mmap: the trainer reads the whole state afterwards)
    from vision_mamba.engine import load_state

    state = {"config": {"model": "vim_tiny"}, "model": {"w": torch.arange(6.0)}}
    save_state(tmp_path / "last.pth", state)
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    load, mapped = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: mapped.append(k.get("mmap", False)) or load(*a, **k))
    for name in ("last.pth", "legacy.pth"):
        for mmap in (False, True):
            read = load_state(tmp_path / name, mmap=mmap)
            assert read["config"] == state["config"] and torch.equal(read["model"]["w"], state["model"]["w"])
    # mapped where asked and where the format allows it (torch refuses mmap for the legacy format)
    assert mapped == [False, True, False, False]
