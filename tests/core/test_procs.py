"""The open-file limit: the hard limit when there is one, what is needed when there is none."""

from __future__ import annotations

import resource
import subprocess
import sys

from fieldhub.core.procs import open_file_target

INFINITY = resource.RLIM_INFINITY


def test_the_soft_limit_rises_to_a_finite_hard_limit() -> None:
    assert open_file_target(1024, 524288, 10_064) == 524288
    assert open_file_target(1024, 4096, 10_064) == 4096


def test_with_no_hard_limit_the_soft_limit_rises_to_what_is_needed_not_to_infinity() -> None:
    # Linux refuses a soft NOFILE limit above fs.nr_open: asking for RLIM_INFINITY fails.
    assert open_file_target(1024, INFINITY, 10_064) == 10_064
    assert open_file_target(20_000, INFINITY, 10_064) == 20_000
    assert open_file_target(INFINITY, INFINITY, 10_064) == INFINITY


def test_a_process_with_a_low_soft_limit_gets_its_hard_limit() -> None:
    # In a child, so this test process keeps its own limit.
    script = (
        "import resource\n"
        "from fieldhub.core.procs import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_open_file_limit(100)\n"
        "print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    got, soft, hard = (int(x) for x in out.stdout.split())
    _, parent_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == parent_hard
    assert got == soft == open_file_target(256, hard, 100)
    assert soft == (256 if hard == INFINITY else hard)
