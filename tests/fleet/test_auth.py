"""The fleet's token checks that need no cluster: a token file others can read, or that is missing, is refused in
one line before anything connects; ``--cluster auto`` with no cluster of this user's says so; results that are not
what a task returns are refused. (A real cluster refusing clients without the token: tests/fleet/test_ray_fleet.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from onnxsmith.fleet import auth
from tests.cli.test_cli import cli

pytest.importorskip("ray", reason="Ray is not installed (pip install 'onnxsmith[ray]')")


def _token(tmp_path: Path, mode: int = 0o600, text: str = "ab" * 32) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, _, err = cli(args, capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return code, lines[0]


@pytest.mark.parametrize("verb", [["probe", "--cluster", "127.0.0.1:1"], ["worker", "--address", "127.0.0.1:1"]])
def test_a_token_file_others_can_read_or_that_is_missing_is_refused(verb: list[str], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(_token(tmp_path, 0o644)))
    code, line = _one_line_error(verb, capsys)
    assert code == 2 and "readable by others" in line and "chmod 600" in line
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(tmp_path / "absent"))
    code, line = _one_line_error(verb, capsys)
    assert code == 2 and "no Ray token file" in line and "umask 077" in line
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(_token(tmp_path, 0o600, "short")))
    code, line = _one_line_error(verb, capsys)
    assert code == 2 and "holds no token" in line
    # --token-file wins over the environment
    if verb[0] == "worker":
        code, line = _one_line_error([*verb, "--token-file", str(tmp_path / "other")], capsys)
        assert code == 2 and str(tmp_path / "other") in line


def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    path = _token(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(Exception, match="belongs to uid 65534"):
        auth.read_token(path)


def test_no_cluster_of_this_user_and_an_unreachable_head_are_one_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(_token(tmp_path)))
    if any(uid == os.getuid() for _, uid, _ in auth._ray_processes()):
        pytest.skip("a Ray cluster of this user runs on this machine")
    code, line = _one_line_error(["probe", "--cluster", "auto"], capsys)
    assert code == 5 and "--cluster auto" in line
    code, line = _one_line_error(["probe", "--cluster", "127.0.0.1:1"], capsys)
    assert code == 5 and "cannot reach the Ray head at 127.0.0.1:1" in line
    code, line = _one_line_error(["probe", "--cluster", "ray://127.0.0.1:10001"], capsys)
    assert code == 2 and "ray://" in line


def test_results_that_are_not_what_a_task_returns_are_refused() -> None:
    from onnxsmith.fleet.ray_executor import MalformedResult, checked_outcome, checked_payload
    from onnxsmith.fleet import objects

    good = {"status": "ok", "worker": "w", "transfers": {"model": "cached"}, "task_s": 1.0,
            "result": {"target": "host"}, "bundle_sha": "0" * 64}
    assert checked_outcome(json.dumps(good), "compile")["worker"] == "w"

    class Payload:  # what a hostile worker could hand Ray to unpickle: never accepted as a result
        pass

    for bad in (good, Payload(), b"{}", "[1]", "not json", json.dumps({**good, "status": "pwned"}),
                json.dumps({**good, "worker": 3}), json.dumps({**good, "transfers": {"model": "exec"}}),
                json.dumps({**good, "bundle_sha": "../x"}), json.dumps({**good, "result": None}),
                json.dumps({**good, "task_s": "1"})):
        with pytest.raises(MalformedResult):
            checked_outcome(bad, "compile")
    data = objects.pack({})
    assert checked_payload(data, objects.digest(data), "bundle") == data
    with pytest.raises(MalformedResult, match="sha256"):
        checked_payload(data, "0" * 64, "bundle")
    with pytest.raises(MalformedResult):
        checked_payload(bytearray(data), objects.digest(data), "bundle")
