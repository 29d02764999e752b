# No environment variables set - uses in-memory storage
circuit_breaker = CircuitProtectorPolicy(resource_key="my_service")

# Or explicitly specify in-memory storage
from resilient_circuit.storage import InMemoryStorage
circuit_breaker = CircuitProtectorPolicy(
    resource_key="my_service",
    storage=InMemoryStorage()
)
