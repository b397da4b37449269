"""``guardpool doctor`` reports what a real worker has in force."""

from __future__ import annotations

import json
import os

import pytest

from guardpool.cli import main


def test_doctor_strict_reports_every_measure(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    by_name = {m["measure"]: m for m in report["measures"]}
    assert code == 0, out
    for name in (
        "own process group",
        "no new privileges",
        "RLIMIT_AS (memory)",
        "scrubbed environment",
        "network namespace",
        "seccomp filter",
    ):
        assert by_name[name]["active"] is True, by_name[name]
    nproc = by_name["RLIMIT_NPROC"]
    if report["probe"]["uid"] == 0:
        assert nproc["active"] is False
        assert "root" in nproc["detail"]
    if os.geteuid() == 0:
        # A root host: the worker dropped privileges and sits in its own cgroup.
        assert report["probe"]["uid"] != 0
        assert by_name["unprivileged worker"]["active"] is True
        assert nproc["active"] is True
        assert by_name["cgroup per worker"]["active"] is True, by_name["cgroup per worker"]
        assert by_name["cgroup per worker"]["detail"].startswith("cgroup v")


def test_doctor_standard_says_why_strict_measures_are_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["doctor", "--hardening", "standard"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "NOT ACTIVE  network namespace" in out
    assert 'hardening is "standard"' in out
