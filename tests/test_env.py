"""The kernel environment policy (pure), and that a real kernel sees it."""

from __future__ import annotations

import pytest

import kernelexec as kx
from kernelexec._env import kernel_environment

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "LANG": "C.UTF-8",
    "OPENAI_API_KEY": "sk-1",
    "AWS_ACCESS_KEY_ID": "A",
    "GITHUB_TOKEN": "g",
    "MY_SECRET": "s",
    "DB_PASSWORD": "p",
    "DATABASE_URL": "postgres://user:pw@host/db",
    "SOME_SETTING": "plain",
    "KEYBOARD_LAYOUT": "us",
}


def test_scrub_removes_secrets_and_provider_variables():
    env = kernel_environment("scrub", None, PARENT)
    assert set(env) == {"PATH", "HOME", "LANG", "SOME_SETTING", "KEYBOARD_LAYOUT"}


def test_true_passes_everything_and_false_only_a_minimal_base():
    assert kernel_environment(True, None, PARENT) == PARENT
    assert set(kernel_environment(False, None, PARENT)) == {"PATH", "HOME", "LANG"}


def test_env_adds_overrides_and_unsets():
    env = kernel_environment("scrub", {"NEW": "1", "HOME": "/tmp", "PATH": None}, PARENT)
    assert env["NEW"] == "1" and env["HOME"] == "/tmp" and "PATH" not in env


@pytest.mark.parametrize("bad", [{"A": 1}, {2: "x"}])
def test_bad_env_entries_are_rejected(bad):
    with pytest.raises(kx.InvalidArgument, match="env entries"):
        kernel_environment("scrub", bad, PARENT)


def test_bad_inherit_env_is_rejected_at_construction():
    with pytest.raises(kx.InvalidArgument, match="inherit_env"):
        kx.Session(inherit_env="all")


@pytest.mark.timeout(60)
def test_the_kernel_sees_the_scrubbed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KX_TEST_API_KEY", "leak-me-not")
    monkeypatch.setenv("KX_TEST_VISIBLE", "yes")
    with kx.Session(env={"KX_ADDED": "1"}, cwd=tmp_path) as s:
        r = s.execute(
            "import os\n"
            "print(os.environ.get('KX_TEST_API_KEY'), os.environ.get('KX_TEST_VISIBLE'),"
            " os.environ.get('KX_ADDED'), os.getcwd())"
        )
    assert r.stdout.split() == ["None", "yes", "1", str(tmp_path)]
