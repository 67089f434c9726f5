"""Whole CPU kinds to fake, so that a test of hardware-dependent choices gives the same result on any machine:
everything vitcls.precision reads (torch's cpuinfo capabilities, the ATen CPU capability, the AMX probe, CUDA)
is replaced together."""

from __future__ import annotations

import types
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuKind:
    name: str
    cpu_name: str
    capability: str  # torch.backends.cpu.get_cpu_capability()
    flags: frozenset[str]  # the capabilities torch.cpu.get_capabilities() reports True

    @property
    def amx_bf16(self) -> bool:
        return {"amx_tile", "amx_bf16"} <= self.flags

    def capabilities(self) -> dict:
        known = {flag for kind in CPU_KINDS.values() for flag in kind.flags}
        return {"architecture": "x86_64", "cpu_name": self.cpu_name, "num_sockets": 1,
                **{flag: flag in self.flags for flag in sorted(known)}}


_X86 = {"sse", "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "f16c", "fma3", "bmi", "bmi2"}
_AVX512 = {"avx512_f", "avx512_cd", "avx512_bw", "avx512_dq", "avx512_vl", "avx512_vnni"}
CPU_KINDS = {
    kind.name: kind
    for kind in (
        CpuKind("avx2", "AMD EPYC", "AVX2", frozenset(_X86 | {"avx2"})),
        CpuKind("avx512", "Intel Xeon (Ice Lake)", "AVX512", frozenset(_X86 | {"avx2"} | _AVX512)),
        CpuKind("amx", "Intel Xeon (Sapphire Rapids)", "AVX512",
                frozenset(_X86 | {"avx2"} | _AVX512 | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})),
    )
}


def fake_cpu_machine(monkeypatch, kind: CpuKind) -> None:
    """Make torch describe a CPU-only machine of this kind (no CUDA device)."""
    import torch

    capabilities = types.MappingProxyType(kind.capabilities())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_tile" in kind.flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kind.capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
