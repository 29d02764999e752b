"""``python -m resilient_circuit.cli``: the same commands as ``resilient-circuit-cli``."""

from resilient_circuit.cli import main

main()
