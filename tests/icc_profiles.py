"""ICC v2 matrix/TRC profiles written byte by byte from the ICC.1:2001-04 layout, for tests.

A profile here is a 128-byte header, a tag table and the tags a display profile needs:
``desc``, ``wtpt``, the three colorants (``rXYZ``, ``gXYZ``, ``bXYZ``: the PCS XYZ, D50, of
full red, green and blue) and one gamma curve per channel. Swapping two colorants makes a
profile whose red is sRGB's green: a conversion to sRGB must swap those channels, which no
"ignore the profile" path can fake.
"""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)
# sRGB's primaries adapted to D50 (Bradford), as in the sRGB ICC profiles.
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def _s15fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15fixed16(x) + _s15fixed16(y) + _s15fixed16(z)


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))  # one entry: u8Fixed8 gamma


def _description(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(8) + bytes(3) + bytes(67)


def matrix_profile(description: str, red: tuple, green: tuple, blue: tuple, gamma: float = 2.2) -> bytes:
    tags = [(b"desc", _description(description)), (b"wtpt", _xyz(*D50)), (b"rXYZ", _xyz(*red)),
            (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*blue)), (b"rTRC", _curve(gamma)), (b"gTRC", _curve(gamma)),
            (b"bTRC", _curve(gamma))]
    offset = 128 + 4 + 12 * len(tags)
    table = data = b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # tags start on 4-byte boundaries
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(28) + b"".join(_s15fixed16(v) for v in D50) + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def swapped_red_green() -> bytes:
    return matrix_profile("red and green swapped", SRGB_GREEN, SRGB_RED, SRGB_BLUE)


def display_p3() -> bytes:
    """A Display-P3-like profile: the P3 primaries (D65 white) adapted to D50 (Bradford), as in
    Apple's Display P3 profile, with a 2.2 gamma: wider than sRGB, so colours move when converted."""
    return matrix_profile("Display P3 (test)", (0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419),
                          (0.1571, 0.0666, 0.7841))
