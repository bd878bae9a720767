"""`incident verify` of hostile archives: bounded in headers, members and inflated bytes.

Each attack is crafted here, byte by byte where tarfile would not write it, and must be
refused within seconds with the project's errors (exit 1 for an archive refused as unsafe,
2 for one that is not a readable tar.gz), never a traceback or minutes of CPU.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_incident import INCIDENT, SIGNER, TRUSTED, folder, good_members, make_archive  # noqa: F401

from opsdsl.audit.incident import IncidentFileError, export_incident, verify_archive
from opsdsl.audit.incident.archive import ArchiveLimits

FAST = 5.0  # seconds: generous, but the unbounded reader takes minutes on these archives


def header(name: bytes, size: int, kind: bytes = b"0") -> bytes:
    """One ustar header block with a correct checksum."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def verify_cli(archive: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    key = tmp_path / "signer.pub"
    key.write_bytes(
        SIGNER.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    command = [sys.executable, "-m", "opsdsl", "incident", "verify", str(archive), "--key", str(key)]
    command += ["--state-dir", str(tmp_path / "state")]
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - began


def test_a_pax_header_built_to_stall_tarfile_is_refused_fast(tmp_path: Path) -> None:
    # CVE-2024-6232: tarfile (3.11.7) searches a PAX header with backtracking regular
    # expressions; a long run of digits takes quadratic time. A few hundred bytes compressed.
    payload = b"1" * 120_000  # about 30 s in tarfile; 400,000 would take minutes
    stream = header(b"././@PaxHeader", len(payload), b"x") + padded(payload)
    stream += header(f"{INCIDENT}/rca.md".encode(), 0) + b"\0" * 1024
    archive = tmp_path / "pax-redos.tar.gz"
    archive.write_bytes(gzip.compress(stream, 9))
    assert archive.stat().st_size < 2000
    done, took = verify_cli(archive, tmp_path)
    assert took < FAST, f"took {took:.1f} s"
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "unsafe archive, refused" in done.stderr and "PAX header of 120000 bytes" in done.stderr


def test_a_small_archive_declaring_a_huge_header_is_refused_before_reading_it(tmp_path: Path) -> None:
    # tarfile reads a PAX or GNU long-name header whole: 1.6 GB from a 1.5 MB archive.
    # The header's content is never read here: its size alone refuses it.
    for kind in (b"x", b"L", b"K", b"g"):
        stream = header(b"././@LongLink", 1_600_000_000, kind) + b"\0" * (4 << 20)
        archive = tmp_path / f"big-{kind.decode()}.tar.gz"
        archive.write_bytes(gzip.compress(stream, 9))
        began = time.monotonic()
        report = verify_archive(archive, TRUSTED)
        assert time.monotonic() - began < FAST
        (problem,) = report.problems
        assert problem.startswith("unsafe archive, refused: ") and "1600000000 bytes" in problem


def test_many_small_pax_records_are_bounded_by_the_header_limit(tmp_path: Path) -> None:
    records = b"".join(b"%d %s=%s\n" % (len(f"a{n}=b") + 3 + len(str(n)), b"a%d" % n, b"b") for n in range(1000))
    stream = header(b"././@PaxHeader", len(records), b"x") + padded(records)
    stream += header(f"{INCIDENT}/rca.md".encode(), 0) + b"\0" * 1024
    archive = tmp_path / "records.tar.gz"
    archive.write_bytes(gzip.compress(stream))
    (problem,) = verify_archive(archive, TRUSTED).problems
    assert "PAX header of" in problem and "8192" in problem


def test_a_gzip_bomb_stops_inflating_at_the_total_cap(tmp_path: Path) -> None:
    # 64 members of 64 MiB of zeros: 4 GiB inflated from 4 MB; read until the cap, no further.
    zeros = gzip.compress(b"\0" * (16 << 20), 9)  # one gzip member; a .gz may hold many in a row
    parts = []
    for index in range(64):
        parts.append(gzip.compress(header(f"{INCIDENT}/evidence/{index}".encode(), 64 << 20)))
        parts += [zeros] * 4
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(b"".join(parts))
    began = time.monotonic()
    report = verify_archive(archive, TRUSTED, limits=ArchiveLimits(total_bytes=256 << 20))
    assert time.monotonic() - began < FAST
    (problem,) = report.problems
    assert "more than 268435456 bytes uncompressed" in problem


def test_a_member_over_the_size_limit_is_refused_at_its_header(tmp_path: Path) -> None:
    stream = header(f"{INCIDENT}/evidence/huge".encode(), 6 << 30) + b"\0" * (1 << 20)
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(gzip.compress(stream))
    done, took = verify_cli(archive, tmp_path)
    assert took < FAST and done.returncode == 1, done.stderr
    assert f"member '{INCIDENT}/evidence/huge'" in done.stderr and "6442450944 bytes" in done.stderr


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    stream = b"".join(header(f"{INCIDENT}/d{n}".encode(), 0, b"5") for n in range(200)) + b"\0" * 1024
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(gzip.compress(stream))
    (problem,) = verify_archive(archive, TRUSTED, limits=ArchiveLimits(members=100)).problems
    assert "more than 100 tar headers" in problem


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (header(b"x", 10)[:-1] + b"\1", "bad header checksum"),
        (header(f"{INCIDENT}/rca.md".encode(), 100) + b"short", "truncated"),
        (header(b"././@PaxHeader", 6, b"x") + padded(b"9 a=b\n"), "malformed PAX record"),
        (header(b"././@PaxHeader", 9, b"x") + padded(b"9 size=x\n"), "malformed PAX record"),
    ],
)
def test_malformed_tar_streams_are_unreadable_not_a_traceback(tmp_path: Path, stream: bytes, message: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(gzip.compress(stream))
    with pytest.raises(IncidentFileError, match=message) as caught:
        verify_archive(archive, TRUSTED)
    assert caught.value.exit_code == 2


def test_a_truncated_gzip_stream_is_unreadable(tmp_path: Path, folder: Path) -> None:  # noqa: F811
    archive = export_incident(folder, tmp_path / "whole.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(IncidentFileError, match=r"not a readable tar\.gz"):
        verify_archive(cut, TRUSTED)


def test_long_and_non_ascii_names_written_by_tarfile_still_verify(tmp_path: Path, folder: Path) -> None:  # noqa: F811
    # PAX headers are how tarfile writes names over 100 bytes or not ASCII: small, and read.
    long_name = "evidence/" + "n" * 150 + "-é.json"
    members = [*good_members(folder), (tarfile.TarInfo(f"{INCIDENT}/{long_name}"), b"{}")]
    report = verify_archive(make_archive(tmp_path / "long.tar.gz", members), TRUSTED)
    assert report.problems == (f"{long_name}: not in the manifest (added after signing)",)
    assert verify_archive(export_incident(folder, tmp_path / "ok.tar.gz"), TRUSTED).ok
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in good_members(folder):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "gnu.tar.gz").write_bytes(gzip.compress(stream.getvalue()))
    assert verify_archive(tmp_path / "gnu.tar.gz", TRUSTED).ok


def test_an_exported_archive_and_its_members_are_private(tmp_path):
    import stat
    import tarfile

    from opsdsl.audit.incident import export_incident

    incident = tmp_path / "INC-1"
    (incident / "evidence").mkdir(parents=True)
    (incident / "evidence" / "log.txt").write_text("x")
    archive = export_incident(incident, tmp_path / "out" / "INC-1.tar.gz")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        modes = {member.name: member.mode for member in tar.getmembers()}
    assert modes == {"INC-1": 0o700, "INC-1/evidence": 0o700, "INC-1/evidence/log.txt": 0o600}
