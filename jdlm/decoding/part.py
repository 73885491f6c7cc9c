"""The base of every strategy part: a frozen dataclass whose numeric knobs are traced and whose structure is static.

A part (Schedule, a rule, a cache, Guidance, Strategy itself) is an ordinary frozen, hashable dataclass of Python
values, and also a JAX pytree:

    Threshold(threshold=0.9)   ->   leaves: [float32 0.9]        aux (static): ()
    Schedule(gen_length=64, temperature=0.7, ...)
                               ->   leaves: [steps, temperature, eps]   aux: (gen_length, block_length, sampled, ...)

`decode` passes the strategy to `jax.jit` as an ordinary argument, so jit's cache key holds only the structure (the
classes and the static fields) and the leaves' shapes: a new threshold or temperature reuses the compiled program.
Fields are static unless declared with `knob()` (a number, traced as a float32 or int32 scalar) or `child()` (a
nested part, or None). Checks in `__post_init__` run on construction only, never on the traced copies jit builds.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

_KIND = "jdlm_part"  # dataclasses.field metadata key


def knob(default, **kwargs):
    """A numeric field that is traced under jit (changing it never recompiles); None is static "off"."""
    return dataclasses.field(default=default, metadata={_KIND: "knob"}, **kwargs)


def child(default, **kwargs):
    """A field holding a nested part (or None), flattened into the parent's pytree."""
    return dataclasses.field(default=default, metadata={_KIND: "child"}, **kwargs)


def derived(**kwargs):
    """A static field computed in `__post_init__` from knobs (e.g. greedy or sampled); not an argument."""
    return dataclasses.field(init=False, default=None, compare=True, repr=False, **kwargs)


def _leaf(value):
    """Python and NumPy numbers become fixed-dtype scalars (float32 / int32), so 1 and 1.0 share a compile."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a traced knob cannot be a bool ({value!r}); make the field static")
    if isinstance(value, (int, np.integer)):
        return np.int32(value)
    if isinstance(value, (float, np.floating)):
        return np.float32(value)
    return value  # already an array or a tracer (inside jit), or None (static "off")


def part(cls):
    """Class decorator: a frozen keyword-only dataclass, registered as a pytree (knobs and children are leaves)."""
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    fields = dataclasses.fields(cls)
    traced = tuple(f.name for f in fields if f.metadata.get(_KIND) in ("knob", "child"))
    knobs = frozenset(f.name for f in fields if f.metadata.get(_KIND) == "knob")
    static = tuple(f.name for f in fields if f.name not in traced)

    def flatten_with_keys(obj):
        children = [(jax.tree_util.GetAttrKey(n), _leaf(getattr(obj, n)) if n in knobs else getattr(obj, n))
                    for n in traced]
        return children, tuple(getattr(obj, n) for n in static)

    def unflatten(aux, children):
        obj = object.__new__(cls)  # no __init__ / __post_init__: children may be tracers
        for name, value in zip(static, aux):
            object.__setattr__(obj, name, value)
        for name, value in zip(traced, children):
            object.__setattr__(obj, name, value)
        return obj

    def flatten(obj):
        children, aux = flatten_with_keys(obj)
        return [c for _, c in children], aux

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    cls.__jdlm_knobs__ = knobs
    return cls


def knob_names(cls: type) -> frozenset[str]:
    """The traced numeric fields of a part class."""
    return getattr(cls, "__jdlm_knobs__", frozenset())
