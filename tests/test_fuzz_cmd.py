"""``guardpool fuzz`` through the real pool, run as a user would (a subprocess, real workers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from guardpool.analysis.fuzzing import GuardFuzzer
from guardpool.policy.loader import load_policy
from guardpool.runner.pool import GuardPool

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tests" / "planted" / "policy.toml"


def guardpool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "guardpool", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_clean_re2_policy_fuzzes_to_exit_0_and_refused_inputs_are_not_findings(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[pool]\nmax_input_bytes = 4096\n"
        "[[guard]]\nname = \"keys\"\ndeny_regex = ['AKIA[0-9A-Z]{16}', '(a+)+$']\n"
        "[[guard]]\nname = \"plain\"\nrequire_regex = ['^[a-z ]*$']\n"
    )
    out = guardpool(
        "fuzz", "--config", str(policy), "--seconds", "4", "--findings", str(tmp_path / "f"),
        "--json",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)  # stdout is only JSON; the table went to stderr
    assert report["findings"] == []
    assert not (tmp_path / "f").exists()
    runs = {g["guard"]: g for g in report["guards"]}
    assert runs["plain"]["runs"] > 0 and runs["keys"]["runs"] > 0
    # Oversize (and today lone-surrogate) inputs were generated, refused, and not reported.
    assert sum(g["refused_by_enforcer"] for g in report["guards"]) > 0
    assert "nothing found" in out.stderr and "guardpool fuzz" in out.stderr


def test_a_planted_redos_is_found_minimised_and_replayed_from_another_directory(
    tmp_path: Path,
) -> None:
    findings = tmp_path / "findings"
    sarif = tmp_path / "fuzz.sarif"
    out = guardpool(
        "fuzz", "--config", "tests/planted/policy.toml", "--guard", "trailing", "--seconds", "3",
        "--findings", str(findings), "--sarif", str(sarif),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    files = sorted(findings.glob("*.json"))
    assert [f.name for f in files] == ["trailing-timeout.json"]  # one per guard and kind
    record = json.loads(files[0].read_text())
    assert record["guard"] == "trailing" and record["kind"] == "timeout"
    text = record["input"]["text"]
    assert text.startswith("aaaa") and len(text) <= record["original_length"] <= 64
    assert record["reproduced"] == "2/2"
    assert record["policy"] == str(PLANTED)  # absolute
    assert record["replay"] in out.stdout
    # SARIF points at the guard function.
    log = json.loads(sarif.read_text())
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "GP-FUZZ-TIMEOUT"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("tests/planted/bad_guards.py")
    source = (ROOT / "tests/planted/bad_guards.py").read_text().splitlines()
    assert source[location["region"]["startLine"] - 1].startswith("def no_trailing_as")
    # Replay with the one printed command, from a directory unrelated to the repo.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = record["replay"].split()
    assert argv[:3] == ["guardpool", "fuzz", "--replay"]
    again = guardpool(*argv[1:], cwd=elsewhere)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "still reproduces" in again.stdout


def test_replay_exits_0_once_the_guard_is_fixed(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    shutil.copy(PLANTED, policy)
    findings = tmp_path / "f"
    out = guardpool(
        "fuzz", "--config", str(policy), "--guard", "trailing", "--seconds", "2",
        "--minimise-seconds", "0", "--findings", str(findings),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    policy.write_text(policy.read_text().replace("no_trailing_as", "safe"))
    again = guardpool("fuzz", "--replay", str(findings / "trailing-timeout.json"), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    answer = json.loads(again.stdout)
    assert answer["reproduces"] is False and answer["now"].startswith("ran fine")
    assert "changed since this finding" in again.stderr


def test_each_kind_of_finding_is_reported_once_per_guard(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[pool]\nworkers = 1\nmemory_mb = 96\n"
        '[[guard]]\nname = "raises"\ncall = "tests.fuzz_guards:raises_on_bang"\n'
        '[[guard]]\nname = "exits"\ncall = "tests.fuzz_guards:exits_on_long"\n'
        '[[guard]]\nname = "hoards"\ncall = "tests.fuzz_guards:hoards_memory"\n'
        '[[guard]]\nname = "fine"\ncall = "tests.fuzz_guards:allow"\n'
    )
    out = guardpool(
        "fuzz", "--config", str(policy), "--seconds", "8", "--minimise-seconds", "2",
        "--findings", str(tmp_path / "f"), "--json",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    kinds = sorted((f["guard"], f["kind"]) for f in report["findings"])
    assert kinds == [("exits", "crash"), ("hoards", "memory"), ("raises", "error")]
    raised = next(f for f in report["findings"] if f["guard"] == "raises")
    assert "unexpected punctuation" in raised["detail"]
    assert raised["input"]["text"] == "!"  # minimised to the one character that matters
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "exits-crash.json", "hoards-memory.json", "raises-error.json",
    ]


def test_minimising_drops_what_does_not_matter() -> None:
    policy = load_policy(PLANTED)
    with GuardPool.from_config(policy) as pool:
        fuzzer = GuardFuzzer(policy, pool, "trailing", ("fuzz",))
        noisy = "please summarise: " + "a" * 26 + "!"
        first = fuzzer.observe(noisy)
        assert first.kind == "timeout"
        found = fuzzer.finding("timeout", noisy, first, seconds=8)
    assert found.confirmed == found.attempts == 2
    assert len(found.value) < len(noisy) and "please" not in found.value
    assert isinstance(found.value, str) and found.value.rstrip("!").strip("a") == ""


def test_bad_input_exits_2(tmp_path: Path) -> None:
    out = guardpool("fuzz", "--config", "tests/planted/policy.toml", "--guard", "nope")
    assert out.returncode == 2 and "no guard named nope" in out.stderr
    assert guardpool("fuzz", "--seconds", "1").returncode == 2
    junk = tmp_path / "junk.json"
    junk.write_text('{"format": "something else"}')
    out = guardpool("fuzz", "--replay", str(junk))
    assert out.returncode == 2 and "not a guardpool fuzz finding" in out.stderr
    assert "Traceback" not in out.stderr
    out = guardpool("fuzz", "--config", "tests/planted/policy.toml", "--seconds", "0")
    assert out.returncode == 2 and "--seconds" in out.stderr


def test_a_time_budget_that_runs_nothing_is_not_a_pass(tmp_path: Path) -> None:
    # --seconds 1e-9 made 0 runs per guard and said "nothing found", exit 0.
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[[guard]]\nname = \"keys\"\ndeny_regex = ['AKIA[0-9A-Z]{16}']\n"
        "[[guard]]\nname = \"plain\"\nrequire_regex = ['^[a-z ]*$']\n"
    )
    out = guardpool(
        "fuzz", "--config", str(policy), "--seconds", "1e-9", "--findings", str(tmp_path / "f"),
        "--json",
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "nothing found" not in out.stderr and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("guardpool fuzz: error: nothing was tested: guard 'keys' ran"), last
    assert "guard 'plain' ran on no input" in last and "give it more time" in last
    report = json.loads(out.stdout)
    assert set(report["untested"]) == {"keys", "plain"}
    assert [g["runs"] for g in report["guards"]] == [0, 0]
    for seconds in ("0", "-1", "nan", "inf", "1e400"):
        bad = guardpool("fuzz", "--config", str(policy), "--seconds", seconds)
        assert bad.returncode == 2 and "--seconds must be more than 0" in bad.stderr, seconds


def _replay_file(tmp_path: Path, name: str, **fields: object) -> Path:
    data: dict[str, object] = {
        "format": "guardpool-fuzz-finding/1",
        "guard": "trailing",
        "kind": "timeout",
        "policy": str(PLANTED),
        "sys_path": [str(ROOT)],
        "labels": ["op:x"],
        "input": {"text": "aaa"},
    }
    data.update(fields)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_hostile_replay_file_is_exit_2_naming_what_is_wrong(tmp_path: Path) -> None:
    # Each of these was a worker killed by a label that is not a string, a traceback
    # (sys_path: 5), a replay that went ahead with labels no operation may have, or a
    # read of /dev/zero until MemoryError.
    os.mkfifo(tmp_path / "fifo")
    cases: list[tuple[Path, str]] = [
        (_replay_file(tmp_path, "ints", labels=[1, 2]), "'labels' must be a list of strings"),
        (_replay_file(tmp_path, "nl", labels=["op:x\n"]), "labels[0]: bad label"),
        (_replay_file(tmp_path, "empty", labels=[]), "at least one label"),
        (_replay_file(tmp_path, "many", labels=["x"] * 1000), "at most 64 labels"),
        (_replay_file(tmp_path, "sp_int", sys_path=5), "'sys_path' must be a list"),
        (_replay_file(tmp_path, "sp_str", sys_path="abc"), "'sys_path' must be a list"),
        (_replay_file(tmp_path, "sp_rel", sys_path=["rel"]), "absolute directories"),
        (_replay_file(tmp_path, "digest", policy_digest=5), "'policy_digest' is not a str"),
        (Path("/dev/zero"), "is not a regular file"),
        (tmp_path / "fifo", "is not a regular file"),
        (tmp_path, "is not a regular file"),
    ]
    for path, says in cases:
        out = guardpool("fuzz", "--replay", str(path))
        assert out.returncode == 2, (path, out.stdout, out.stderr)
        assert says in out.stderr and str(path) in out.stderr, (path, out.stderr)
        assert "Traceback" not in out.stderr
    # the same file with good fields replays (exit 0 or 1, never 2): the checks are not too strict
    ok = guardpool("fuzz", "--replay", str(_replay_file(tmp_path, "ok")))
    assert ok.returncode in (0, 1) and "trailing timeout" in ok.stdout, ok.stderr


def test_the_help_says_a_replay_file_is_trusted() -> None:
    out = guardpool("fuzz", "--help")
    text = " ".join(out.stdout.split())
    assert "Trusted like a policy file" in text and "exit 2" in text
