"""``guardpool hook claude-code`` on recorded hook payloads, in-process and against a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardpool.audit.ledger import Ledger
from guardpool.commands.hook import labels_for

from .test_server import TOKEN, Server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "hooks"


@pytest.mark.parametrize(
    ("tool", "tool_input", "label"),
    [
        ("Bash", {"command": "git push --force origin main"}, "op:cmd:git:push"),
        ("Bash", {"command": "ls"}, "op:cmd:ls"),
        ("Bash", {"command": "echo 'unclosed"}, "op:cmd:echo:unclosed"),
        ("WebFetch", {"url": "https://x"}, "op:net:r"),
        ("Write", {"file_path": "/a", "content": "x"}, "op:fs:w"),
        ("Read", {"file_path": "/a"}, "op:fs:r"),
        ("mcp__github__create_issue", {}, "op:mcp:github:create_issue"),
        ("TodoWrite", {}, "op:tool:TodoWrite"),
    ],
)
def test_tool_calls_map_to_labels(tool: str, tool_input: dict[str, str], label: str) -> None:
    assert labels_for(tool, tool_input) == (label,)


def policy(tmp_path: Path) -> Path:
    db = tmp_path / "g.db"
    p = tmp_path / "p.toml"
    p.write_text(
        '[[guard]]\nname = "keys"\nops = ["*"]\ndeny_regex = [\'AKIA[0-9A-Z]{16}\']\n'
        'reason = "credential in outbound data"\n'
        '[[guard]]\nname = "no-rm-root"\nops = ["op:cmd:rm"]\ndeny_regex = [\'rm -rf /\']\n'
        '[[guard]]\nname = "injection"\nphase = "after"\nops = ["op:net:r"]\n'
        "deny_regex = ['(?i)ignore (all )?previous instructions']\n"
        'reason = "prompt injection in fetched content"\n'
        '[limits."op:cmd:*"]\ncalls = 100\n'
        f'[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
    )
    return p


def hook(payload: str, *source: str, state: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "guardpool", "hook", "claude-code", *source, "--state", str(state)],
        cwd=ROOT,
        input=(DATA / payload).read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def decision(result: dict[str, object]) -> str:
    return str(result["hookSpecificOutput"]["permissionDecision"])  # type: ignore[index]


def test_pre_and_post_in_process(tmp_path: Path) -> None:
    cfg = ("--config", str(policy(tmp_path)))
    state = tmp_path / "state"
    assert decision(hook("bash_git_push_pre.json", *cfg, state=state)) == "allow"
    assert list(state.iterdir())  # remembered for the PostToolUse
    assert hook("bash_git_push_post.json", *cfg, state=state) == {}
    assert not list(state.iterdir())  # settled and forgotten
    denied = hook("bash_rm_pre.json", *cfg, state=state)
    assert decision(denied) == "deny"
    leak = hook("write_pre.json", *cfg, state=state)
    assert decision(leak) == "deny"
    assert "credential" in leak["hookSpecificOutput"]["permissionDecisionReason"]  # type: ignore[index]
    assert decision(hook("mcp_pre.json", *cfg, state=state)) == "allow"
    assert decision(hook("webfetch_pre.json", *cfg, state=state)) == "allow"
    blocked = hook("webfetch_post.json", *cfg, state=state)
    assert blocked == {"decision": "block", "reason": "prompt injection in fetched content"}
    ledger = Ledger(tmp_path / "g.db")
    try:
        events = [e.event for e in ledger.events("sess-1")]
        # git push was reserved against the op:cmd limit and settled; the fetch matched
        # no limit (nothing to settle) but its output still met the after-guards.
        assert [e.kind for e in events].count("settle") == 1
        assert any(
            e.kind == "verdict" and e.guard == "injection" and e.outcome == "deny" for e in events
        )
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_pre_against_a_running_server(tmp_path: Path) -> None:
    server = Server(tmp_path, "--token", TOKEN)
    server.wait_ready()
    try:
        src = ("--server", server.url, "--token", TOKEN)
        state = tmp_path / "state"
        assert decision(hook("bash_git_push_pre.json", *src, state=state)) == "allow"
        assert hook("bash_git_push_post.json", *src, state=state) == {}
        bad = ("--server", server.url, "--token", "wrong")
        denied = hook("mcp_pre.json", *bad, state=state)  # fail closed on a server error
        assert decision(denied) == "deny"
        assert "401" in denied["hookSpecificOutput"]["permissionDecisionReason"]  # type: ignore[index]
    finally:
        server.stop()


def test_a_payload_that_is_not_json_is_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardpool",
            "hook",
            "claude-code",
            "--config",
            str(policy(tmp_path)),
        ],
        cwd=ROOT,
        input=b"not json",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and b"not JSON" in out.stderr
