import hashlib
import struct

import same_machine_code as smc


def _elf(sections):
    """A minimal little-endian ELF64 image: a null section, .shstrtab, then (name, bytes) sections."""
    names = b"\0.shstrtab\0" + b"".join(n.encode() + b"\0" for n, _ in sections)
    body, offsets = names, []
    for _, data in sections:
        offsets.append(64 + len(body))
        body += data
    shoff = 64 + len(body)
    hdr = bytearray(64)
    struct.pack_into("<Q", hdr, 0x28, shoff)
    struct.pack_into("<HHH", hdr, 0x3A, 64, 2 + len(sections), 1)
    shdrs = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    shdrs += struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, 64, len(names), 0, 0, 1, 0)
    at = len(b"\0.shstrtab\0")
    for (name, data), off in zip(sections, offsets):
        shdrs += struct.pack("<IIQQQQIIQQ", at, 1, 6, 0, off, len(data), 0, 0, 128, 0)
        at += len(name) + 1
    return bytes(hdr) + body + shdrs


def test_text_sections_hash_only_kernel_code():
    elf = _elf([(".text.kern", b"\x01\x02\x03"), (".nv.info", b"meta")])
    assert smc.text_sections(elf) == {".text.kern": hashlib.md5(b"\x01\x02\x03").hexdigest()}


def test_modules_pair_up_by_tag(tmp_path):
    for n in ("kvprefetch_decode_bf16_bf16_d128_s3_pf0_sm90a_0123456789ab.so", "other_pdl_sm90a_aaaaaaaaaaaa.so"):
        (tmp_path / n).write_bytes(b"")
    assert set(smc.by_tag(tmp_path)) == {"kvprefetch_decode_bf16_bf16_d128_s3_pf0_sm90a", "other_pdl_sm90a"}
