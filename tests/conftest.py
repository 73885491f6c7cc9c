import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# In-process CLI calls would otherwise turn JAX's persistent cache (and jdlm's store of compiled decodes) on for the
# rest of the session, in the user's home: later tests would load programs instead of compiling them, and the
# compile-once tests would count nothing. Tests of the cache set this themselves.
os.environ.setdefault("JDLM_COMPILATION_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
