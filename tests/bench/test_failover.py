"""`fieldhub bench failover --scenario bridge-database-link`, short: the database host's link
cut under the bridge for 15 s while 100 devices publish, every acknowledged message stored
once afterwards. The same code as the benchmark (about a minute and a half)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fieldhub.bench import netlab

REASON = netlab.unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}"),
]


@pytest.mark.timeout(600)
def test_a_cut_link_to_the_database_loses_and_doubles_nothing() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "fieldhub", "bench", "failover", "--json",
            "--scenario", "bridge-database-link", "--cut", "15", "--rate", "300",
            "--devices", "100", "--publishers", "1", "--before", "3", "--after", "5",
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    [link] = result["scenarios"]
    assert link["name"] == "bridge-database-link"
    assert link["acked"] == 300 * (3 + 15 + 5)
    assert link["lost"] == 0
    assert link["doubled"] == 0
    # The bridge held what arrived during the cut, and wrote again once the link was back.
    assert link["backlog_at_restore"] > 0
    assert link["recovery_s"] < 30
