"""The mode switch each hand-written kernel has: whether jdlm/model.py calls it, read when a function is traced."""

from __future__ import annotations

import contextlib

import jax

from jdlm.quantize import compute_capability

MIN_CAPABILITY = (8, 0)  # Ampere on: Triton's bf16 tensor-core dots


SWITCHES: list[KernelSwitch] = []  # every kernel's switch, in the order the kernel modules were imported


def all_modes() -> str:
    """Every kernel's current mode, as text ("float_linear=auto int8_swiglu=auto quantized_linear=off
    window_attention=auto"), sorted by name."""
    import jdlm.kernels.float_linear  # noqa: F401  (jdlm's kernels register their switches on import)
    import jdlm.kernels.int8_swiglu  # noqa: F401
    import jdlm.kernels.quantized_linear  # noqa: F401
    import jdlm.kernels.window_attention  # noqa: F401

    return " ".join(f"{s.name}={s.mode}" for s in sorted(SWITCHES, key=lambda s: s.name))


class KernelSwitch:
    """One kernel's mode: one of `modes` ("auto", "on", "off" and the kernel's own); "off" by default.

    The mode is read when a function is traced: set it before the first call of a jitted function, or clear jax's
    caches after (`jax.clear_caches()`). Every switch made is listed in SWITCHES, whose modes (`all_modes`) are
    part of the key of a stored decode program (jdlm.decoding.executables), so programs traced under different
    modes are stored apart.
    """

    def __init__(self, name: str, what: str, modes: tuple[str, ...], default: str = "off"):
        self.name, self.what, self.modes, self.mode = name, what, modes, default
        SWITCHES.append(self)

    def set(self, mode: str) -> str:
        """Sets the mode; returns the previous one."""
        if mode not in self.modes:
            raise ValueError(f"unknown {self.what} mode {mode!r}; choose one of {', '.join(self.modes)}")
        previous, self.mode = self.mode, mode
        return previous

    @contextlib.contextmanager
    def use(self, mode: str):
        """The mode `mode` for the duration of a with-block."""
        previous = self.set(mode)
        try:
            yield
        finally:
            self.set(previous)

    @staticmethod
    def auto_applies(min_capability: tuple[int, int] = MIN_CAPABILITY) -> bool:
        """What "auto" means: a GPU of at least `min_capability` (default Ampere) outside a multi-device mesh (a
        pallas_call has no partitioning rule: under a mesh XLA would gather the sharded operands onto every
        device)."""
        if jax.default_backend() != "gpu" or jax.sharding.get_abstract_mesh().size > 1:
            return False
        capability = compute_capability(jax.devices()[0])
        return capability is not None and capability >= min_capability
