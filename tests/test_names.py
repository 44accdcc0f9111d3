"""File names across trust boundaries (issue 8 item 2): the pure rules in shared/names.py and the
client's safe write in shared/results.py, without a broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.client import Client, CutqError
from shared.names import (
    MAX_INPUT_NAME_BYTES,
    MAX_RESULT_NAME_BYTES,
    RESULT_EXTENSIONS,
    name_key,
    safe_result_name,
    validate_input_name,
)
from shared.results import _write_inside

# ---------------------------------------------------------------- safe_result_name


@pytest.mark.parametrize(("name", "ext", "want"), [
    ("photo.jpg", "png", "photo.png"),
    ("photo.jpg", "webp", "photo.webp"),
    ("photo.JPG", "JPG", "photo.jpg"),
    ("a.tar.gz", "png", "a.tar.png"),
    ("../../../etc/passwd", "png", "passwd.png"),
    ("C:\\Users\\x\\evil.jpg", "png", "evil.png"),
    ("./../../x.jpg", "./../../ESCAPED", "x.png"),  # the worker's extension is not a path either
    ("x.jpg", "png/../../y", "x.png"),
    ("x.jpg", "exe", "x.png"),
    ("x.jpg", None, "x.png"),
    ("..", "png", "task-7.png"),
    (".", "png", "task-7.png"),
    ("", "png", "task-7.png"),
    ("...", "png", "task-7.png"),
    ("/", "png", "task-7.png"),
    (".bashrc", "png", "bashrc.png"),  # never a hidden file
    ("a\x00b.jpg", "png", "ab.png"),
    ("line\nbreak\r.jpg", "png", "linebreak.png"),
    ("\x1b[31mred.jpg", "png", "[31mred.png"),
    ("rtl\u202egpj.png", "png", "rtlgpj.png"),  # bidi override dropped
    ("bad\ud800.png", "png", "bad.png"),  # a lone surrogate cannot even be encoded
    ("CON.jpg", "png", "_CON.png"),
    ("trailing. .jpg", "png", "trailing.png"),
    (12345, "png", "task-7.png"),
])
def test_safe_result_name_examples(name, ext, want):
    assert safe_result_name(name, ext, 7) == want


def test_long_names_are_cut_at_a_character_boundary_within_the_limit():
    for stem in ("x" * 60_000, "é" * 5000, "🙂" * 5000):
        got = safe_result_name(stem + ".jpg", "webp", 1)
        assert got.endswith(".webp") and len(got.encode()) <= MAX_RESULT_NAME_BYTES
        assert len(got.encode()) > MAX_RESULT_NAME_BYTES - 4  # cut, not dropped
        assert got[:-5] == stem[:len(got) - 5]


def test_collisions_get_numbered_suffixes_case_and_normalisation_blind():
    taken: set[str] = set()
    got = []
    for name in ("a.jpg", "a.png", "A.webp", "a-2.png", "caf\u00e9.png", "cafe\u0301.jpg", "x" * 300):
        n = safe_result_name(name, "png", len(got), taken)
        taken.add(name_key(n))
        got.append(n)
    assert got[:6] == ["a.png", "a-2.png", "A-3.png", "a-2-2.png", "caf\u00e9.png", "cafe\u0301-2.png"]
    long_one = safe_result_name("x" * 300, "png", 99, taken | {name_key(got[6])})
    assert long_one.endswith("-2.png") and len(long_one.encode()) <= MAX_RESULT_NAME_BYTES


names = st.one_of(
    st.text(max_size=400),
    st.text(alphabet=st.sampled_from("./\\\x00 .a\u00e9\U0001f642\n"), max_size=40),
    st.sampled_from(["..", ".", "", "/", "\\", "a.png", "A.PNG", "../../x", "a/../.."]),
)
exts = st.one_of(st.none(), st.text(max_size=20), st.sampled_from([*RESULT_EXTENSIONS, "PNG", "./../../ESCAPED"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(names, exts), min_size=1, max_size=12))
def test_property_every_result_name_is_one_safe_distinct_component(job):
    taken: set[str] = set()
    out = []
    for task_id, (name, ext) in enumerate(job, start=1):
        got = safe_result_name(name, ext, task_id, taken)
        taken.add(name_key(got))
        out.append(got)
        assert "/" not in got and "\\" not in got and "\x00" not in got
        assert got not in (".", "..", "") and not got.startswith(".")
        assert len(got.encode("utf-8")) <= MAX_RESULT_NAME_BYTES
        assert got.rsplit(".", 1)[1] in RESULT_EXTENSIONS
        assert all(ch.isprintable() or ch == " " for ch in got), got
        assert os.path.basename(got) == got and Path(got).name == got
    assert len({name_key(n) for n in out}) == len(out)


# ---------------------------------------------------------------- validate_input_name


def test_validate_input_name():
    assert validate_input_name("photo.jpg") is None
    assert validate_input_name("dir/photo.jpg") is None  # a label; fetch drops directories
    assert validate_input_name("é" * (MAX_INPUT_NAME_BYTES // 2)) is None  # 1024 bytes exactly
    long = validate_input_name("é" * (MAX_INPUT_NAME_BYTES // 2) + "x")
    assert long and "1025 bytes" in long and "\n" not in long
    assert "60004 bytes" in validate_input_name("x" * 60_000 + ".png")
    assert len(validate_input_name("x" * 60_000)) < 200  # the message does not echo the whole name
    assert "U+0000" in validate_input_name("a\x00.png")
    assert "U+000A" in validate_input_name("a\n.png")
    assert "U+202E" in validate_input_name("a\u202e.png")
    assert "U+D800" in validate_input_name("a\ud800.png")
    assert validate_input_name("") and validate_input_name(None) and validate_input_name(b"a.png")


@given(st.text(max_size=300))
def test_property_accepted_input_names_encode_and_fit(name):
    if validate_input_name(name) is None:
        assert name and len(name.encode("utf-8")) <= MAX_INPUT_NAME_BYTES
        assert "\x00" not in name and "\n" not in name


def test_client_refuses_absurd_names_before_sending_anything():
    # no broker listens there: a refusal that tried to send would time out as BrokerUnavailable
    with Client("tcp://127.0.0.1:1", timeout=0.2) as c:
        for bad in ("x" * 60_000 + ".png", "nul\x00.png", "new\nline.png"):
            with pytest.raises(CutqError) as e:
                c.submit([("ok.png", b"a"), (bad, b"b")], processor="noop")
            assert e.value.code == "bad_request" and "\n" not in str(e.value)


# ---------------------------------------------------------------- _write_inside


def test_write_inside_writes_through_a_temporary_file(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"old")
    _write_inside(out.resolve(), "a.png", b"new")
    assert (out / "a.png").read_bytes() == b"new"
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no temporary file left


def test_write_inside_refuses_a_link_pointing_out(tmp_path: Path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_bytes(b"keep")
    (out / "a.png").symlink_to(victim)
    with pytest.raises(CutqError, match="outside"):
        _write_inside(out.resolve(), "a.png", b"EVIL")
    assert victim.read_bytes() == b"keep" and sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_write_inside_refuses_what_is_not_one_component(tmp_path: Path):
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    for bad in ("../x.png", "../../x.png", "..", "."):
        with pytest.raises(CutqError):
            _write_inside(out.resolve(), bad, b"EVIL")
    assert not list((tmp_path / "a").glob("x.png")) and not (tmp_path / "x.png").exists()
