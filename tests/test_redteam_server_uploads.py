"""Red team (issue 20): what an upload's client-chosen file name may put on the server's disk.

A stored input is named ``<field><suffix>``: only the field name (ours) and a suffix of one dot plus 1-5
lower-case letters or digits taken from the client's name; anything else in the client's name (spaces,
shell or path characters, control and bidi characters, long or non-ASCII suffixes) never reaches the disk.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.files import JobFiles

SAFE = re.compile(r"^(reference|driving)(\.[a-z0-9]{1,5})?$")


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("photo.jpg", "reference.jpg"),
        ("PHOTO.JPEG", "reference.jpeg"),  # lower-cased
        ("clip.tar.webp", "reference.webp"),  # the last suffix only
        ("no_suffix", "reference"),
        (None, "reference"),
        ("", "reference"),
        ("clip.mp4 ;rm -rf", "reference"),  # a space and shell characters in the suffix
        ("clip.mp4\n", "reference"),  # a trailing newline (a regex "$" would let it through)
        ("clip.mp4\u202e", "reference"),  # a right-to-left override
        ("clip.jpé", "reference"),  # non-ASCII
        ("clip.abcdef", "reference"),  # six characters: longer than any media suffix
        ("clip.m_p4", "reference"),
        ("clip.$(id)", "reference"),
        ("../../etc/passwd.conf", "reference.conf"),  # only the last name's suffix, never its folders
    ],
)
def test_a_stored_input_name_is_the_field_plus_a_plain_suffix(tmp_path: Path, filename, stored) -> None:
    files = JobFiles(tmp_path)
    name = files.input_name("reference", filename)
    assert name == stored
    assert SAFE.match(name)
    assert (files.job_dir("j") / name).parent == files.job_dir("j")  # never outside the job's folder


def test_every_printable_ascii_character_in_a_suffix_but_letters_and_digits_is_dropped(
    tmp_path: Path,
) -> None:
    files = JobFiles(tmp_path)
    for code in range(32, 127):
        char = chr(code)
        name = files.input_name("driving", f"clip.mp{char}")
        expected = f"driving.mp{char.lower()}" if char.isalnum() else "driving"
        if char == "/":  # a trailing separator names the folder "clip.mp": its suffix is ".mp"
            expected = "driving.mp"
        if char == ".":  # "clip.mp." has no suffix at all
            expected = "driving"
        assert name == expected, (char, name)
