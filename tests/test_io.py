import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bioinstruct.errors import DataError
from bioinstruct.io.rows import (JsonlAppender, atomic_open, atomic_write_json, iter_jsonl, iter_rows, read_json,
                            read_jsonl, repair_jsonl)

pytestmark = pytest.mark.unit


def test_append_then_read(tmp_path):
    p = tmp_path / "a.jsonl"
    with JsonlAppender(p) as out:
        out.write({"i": 0})
        out.write_many([{"i": 1}, {"i": 2, "text": "naïve β-blocker"}])
    assert read_jsonl(p) == [{"i": 0}, {"i": 1}, {"i": 2, "text": "naïve β-blocker"}]


def test_torn_last_line_is_cut_and_append_continues(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"i": 0}\n{"i": 1}\n{"i": 2, "te')
    with pytest.raises(DataError, match=r"a.jsonl:3: invalid JSON"):
        read_jsonl(p)
    assert read_jsonl(p, allow_torn_tail=True) == [{"i": 0}, {"i": 1}]
    with JsonlAppender(p) as out:
        assert out.repaired_bytes == len('{"i": 2, "te')
        out.write({"i": 2})
    assert read_jsonl(p) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_last_line_torn_inside_a_character_is_skipped_only_when_allowed(tmp_path):
    # A killed appender (ensure_ascii=False) can stop between the two bytes of "β".
    p = tmp_path / "a.jsonl"
    p.write_bytes('{"i": 0}\n{"i": 1, "text": "β'.encode()[:-1])
    with pytest.raises(DataError, match=r"a.jsonl:2: not UTF-8"):
        read_jsonl(p)
    assert read_jsonl(p, allow_torn_tail=True) == [{"i": 0}]
    p.write_bytes('{"i": 0, "text": "\xff"}\n{"i": 1}'.encode("latin-1"))  # bad bytes before the tail
    with pytest.raises(DataError, match=r"a.jsonl:1: not UTF-8"):
        read_jsonl(p, allow_torn_tail=True)


def test_streams_and_user_files_read_alike(tmp_path):
    # One JSON Lines reader: a byte-order mark and CRLF line ends are read the same everywhere.
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"i": 0}\r\n\r\n{"i": 1}\r\n')
    assert read_jsonl(p) == [{"i": 0}, {"i": 1}]
    assert [row for _, row in iter_rows(p)] == [{"i": 0}, {"i": 1}]


def test_complete_last_record_missing_newline_is_kept(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"i": 0}\n{"i": 1}')
    assert repair_jsonl(p) == 0
    assert p.read_text() == '{"i": 0}\n{"i": 1}\n'


def test_repair_single_torn_line_and_long_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"i": ')
    assert repair_jsonl(p) == 6 and p.read_text() == ""
    big = {"text": "x" * 200_000}  # longer than the repair's read-back block
    p.write_text(json.dumps(big) + "\n" + json.dumps(big)[:150_000])
    repair_jsonl(p)
    assert read_jsonl(p) == [big]


def test_malformed_middle_line_is_reported_not_repaired(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    assert repair_jsonl(p) == 0
    with pytest.raises(DataError, match=r"a.jsonl:2: invalid JSON"):
        list(iter_jsonl(p, allow_torn_tail=True))


def test_read_json_reports_line(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(DataError, match=r"x.json:4: invalid JSON"):
        read_json(p)


def test_atomic_write_keeps_old_content_when_block_raises(tmp_path):
    p = tmp_path / "results.json"
    atomic_write_json(p, {"acc": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write('{"acc": ')
            raise RuntimeError("crash")
    assert read_json(p) == {"acc": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_atomic_write_survives_kill_9_mid_write(tmp_path):
    """A writer killed with SIGKILL half-way leaves the previous file intact."""
    p = tmp_path / "results.json"
    atomic_write_json(p, {"acc": 0.5})
    started = tmp_path / "started"
    code = textwrap.dedent(f"""
        import time, pathlib
        from bioinstruct.io.rows import atomic_open
        with atomic_open({str(p)!r}) as f:
            f.write('{{"acc": ')
            f.flush()
            pathlib.Path({str(started)!r}).touch()
            time.sleep(60)
            f.write('0.9}}')
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not started.exists():
        assert time.time() < deadline and proc.poll() is None, "writer did not start"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_json(p) == {"acc": 0.5}
    # The killed writer's temporary file is hidden and never mistaken for the output.
    leftovers = [n for n in os.listdir(tmp_path) if n not in ("results.json", "started")]
    assert all(n.startswith(".results.json.") and n.endswith(".tmp") for n in leftovers)


def test_atomic_files_follow_umask(tmp_path):
    p = tmp_path / "out.json"
    atomic_write_json(p, {})
    old = os.umask(0)
    os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~old


def test_appender_survives_kill_9_between_writes(tmp_path):
    """Records fsync'ed before a kill are all there; a re-opened appender continues."""
    p = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import os
        from bioinstruct.io.rows import JsonlAppender
        out = JsonlAppender({str(p)!r})
        for i in range(100000):
            out.write({{"i": i, "pad": "x" * 500}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while (not p.exists() or p.stat().st_size < 50_000) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(p, allow_torn_tail=True)
    assert [r["i"] for r in before] == list(range(len(before)))
    with JsonlAppender(p) as out:
        out.write({"i": len(before), "pad": ""})
    after = read_jsonl(p)
    assert [r["i"] for r in after] == list(range(len(before) + 1))
