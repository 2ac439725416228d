"""Test-session settings that must be in place before torch is imported."""
import os

# OpenMP threads that spin while waiting starve everything else on a small shared CPU: the same 40 tiny-model
# steps took 80 s instead of 8 s beside another busy process. Passive waits cost nothing measurable alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
