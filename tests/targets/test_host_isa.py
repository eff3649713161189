"""Host detection names the vector ISA it found and the int8 path it implies."""

from __future__ import annotations

import json

from click.testing import CliRunner

from onnxsmith.cli import cli
from onnxsmith.targets.host import cpu_flags, isa_summary


def test_the_int8_path_follows_the_widest_int8_instructions() -> None:
    zen3 = isa_summary(frozenset({"avx2", "fma"}))
    assert zen3["isa"] == ["AVX2"] and zen3["int8_path"].startswith("AVX2 without VNNI")
    icelake = isa_summary(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert icelake["isa"] == ["AVX2", "AVX-512", "AVX-512 VNNI"] and icelake["int8_path"].startswith("VNNI")
    sapphire = isa_summary(frozenset({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}))
    assert sapphire["int8_path"].startswith("AMX") and "AMX-INT8" in sapphire["isa"]
    assert isa_summary(frozenset({"asimd", "asimddp", "i8mm", "sve"}))["int8_path"].startswith("NEON I8MM")
    assert isa_summary(frozenset({"asimd"}))["int8_path"].startswith("NEON without dot product")
    assert isa_summary(frozenset())["isa"] == []


def test_doctor_reports_this_machines_isa() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    host = json.loads(result.output)["host"]
    assert host["int8_path"] == isa_summary(cpu_flags())["int8_path"] and host["text"].startswith("ISA: ")
