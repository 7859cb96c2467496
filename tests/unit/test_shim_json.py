"""The shim's JSON helpers and raw request body, checked against json and the node daemon."""

from __future__ import annotations

import json
import posix

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leasewire.cni import shim
from leasewire.cni.cniconfig import CniError
from leasewire.cni.shimwire import parse_raw_request

# Everything json.dumps can emit in a string: every code point, lone surrogates included.
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children) | st.dictionaries(any_text, children),
    max_leaves=10,
)


def _written(text: str) -> str:
    """Return ``text`` as the shim writes it to stdout, decoded again."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        'quote " inside',
        "back\\slash",
        "tab\tnew\nline\r",
        "\x00\x01\x1f\x7f",
        "ü €",
        "😀",
    ],
)
def test_json_string_table(text: str) -> None:
    assert json.loads(shim.json_string(text)) == text


@given(any_text)
def test_json_string_round_trips(text: str) -> None:
    # Not simply `text`: JSON reads a high and a low surrogate in a row as one
    # character, for json.dumps as for the shim.
    assert json.loads(_written(shim.json_string(text))) == json.loads(json.dumps(text))


def test_json_string_surrogate_pair() -> None:
    text = "\ud83d\ude00"

    assert json.loads(_written(shim.json_string(text))) == "\U0001f600"


def test_json_string_lone_surrogate() -> None:
    # An undecodable byte of CNI_NETNS reaches a message as a surrogate.
    written = _written(shim.json_string("/run/netns/\udcff"))

    assert written == '"/run/netns/\\udcff"'
    assert json.loads(written) == "/run/netns/\udcff"


@given(st.dictionaries(any_text, json_values), st.sampled_from([None, 0, 2]))
def test_top_level_strings_match_json(config: dict[str, object], indent: int | None) -> None:
    text = json.dumps(config, indent=indent, ensure_ascii=indent is None)

    # Read back by json, because a surrogate pair in the input becomes one character.
    parsed = json.loads(text)
    expected = {key: value for key, value in parsed.items() if isinstance(value, str)}
    assert shim.top_level_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"cniVersion": "1.0.0", "socket": "/s"}', {"cniVersion": "1.0.0", "socket": "/s"}),
        ('{"cniVersion": "0.4.0", "cniVersion": "1.0.0"}', {"cniVersion": "1.0.0"}),
        ('{"cniVersion": "0.4.0", "cniVersion": 1}', {}),
        ('{"a": [1, {"b": [true, false, null]}], "v": "\\u00fc\\ud83d\\ude00"}', {"v": "ü😀"}),
        ('{"nested": {"cniVersion": "0.3.1"}}', {}),
        (" \\n{ }\\t", {}),
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        ('{"cniVersion": 3}', {}),
        ('{"cniVersion": "1.0.0"', {}),
        ('{"cniVersion": "1.0.0"} trailing', {}),
        ('{"cniVersion": "1.0.0", }', {}),
        ('{"cniVersion": "1.\\x0.0"}', {}),
        ('{"cniVersion": "tab\tinside"}', {}),
        ('{"a": [1 2], "cniVersion": "1.0.0"}', {}),
        ('{"a": 1e, "cniVersion": "1.0.0"}', {}),
        ('{"a": tru, "cniVersion": "1.0.0"}', {}),
        ("[" * 5000 + "]" * 5000, {}),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", {}),
    ],
)
def test_top_level_strings_table(text: str, expected: dict[str, str]) -> None:
    assert shim.top_level_strings(text) == expected
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return
    if isinstance(parsed, dict):
        assert {key: value for key, value in parsed.items() if isinstance(value, str)} == expected


def test_version_answer_is_json() -> None:
    answer = json.loads(shim.version_answer("0.4.0"))

    assert answer == {"cniVersion": "0.4.0", "supportedVersions": list(shim.SUPPORTED_VERSIONS)}


@given(
    st.dictionaries(
        st.sampled_from(shim.CNI_VARIABLES),
        st.binary().filter(lambda value: b"\0" not in value),
    ),
    # Without surrogates, so that the text has a UTF-8 form.
    st.text(),
)
def test_raw_body_read_by_node_daemon(env: dict[bytes, bytes], stdin: str) -> None:
    body = shim.request_body(env, stdin.encode())

    parsed_env, parsed_stdin = parse_raw_request(body)

    expected = {
        name.decode(): env.get(name, b"").decode("utf-8", "surrogateescape")
        for name in shim.CNI_VARIABLES
    }
    assert parsed_env == expected
    assert parsed_stdin == stdin


@pytest.mark.parametrize(
    "body", [b"CNI_COMMAND=ADD", b"CNI_COMMAND\0\0{}", b"CNI_COMMAND=ADD\0\0\xff"]
)
def test_raw_body_invalid(body: bytes) -> None:
    with pytest.raises(CniError) as raised:
        parse_raw_request(body)

    assert raised.value.code == 6


def test_raw_body_without_variables() -> None:
    assert parse_raw_request(b"\0{}") == ({}, "{}")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"pod", b"/work/pod"),
        (b"./a/./b", b"/work/a/b"),
        (b"a/../../b", b"/b"),
        (b"../../../../x", b"/x"),
        (b"a//b/", b"/work/a/b"),
    ],
)
def test_absolute_path(path: bytes, expected: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(posix, "getcwdb", lambda: b"/work")

    assert shim.absolute_path(path) == expected
